"""Quality: per-row metrics, the ASR and speaker judges, and the gates that keep or retry a row.

May import: the leaves and storage, records. torch and transformers only inside the judges' functions
(they load on a replica that has a judge configured).
"""
