"""Planning: from input shards and config to the rows of a job. Driver-side scan and index (keys and
lengths, no cell parsed), replica-side planner (cells parsed and checked), ids, sweeps, voices and
prompt files.

May import: the leaves, storage, records, quality, model. No Ray, no torch: the model's script checks
are imported inside the functions that use them, so importing planning never loads dia_model.
"""
