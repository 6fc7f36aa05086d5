"""The driver: one job from start to end on Ray: the job's steps, the scheduler of replicas, the
work queue, the row ledger, the cluster connection and the progress bar.

May import: everything below it (leaves, storage, records, quality, model, planning, replica) and Ray.
"""
