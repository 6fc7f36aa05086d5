"""The replica: one Ray actor holding one model, keeping its engine full. Ray is imported only by the
actor shell (``actor.py``); the engine feeding, the caches, the quality retries, the writing of
finished rows and the delivery of their metadata are plain Python, each in its own module.

May import: everything below it (leaves, storage, records, quality, model, planning).
"""
