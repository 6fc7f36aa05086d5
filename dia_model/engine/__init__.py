"""The decode engine: sampling, the shared decode step, static batches, the slot engine (state,
table, CUDA graphs), admission checks, long form, and the stream loop. Imports point down:
sampling, buckets, timeline -> step -> static, slot_state, slot_table -> graphs, longform -> admission
-> loop. Nothing here imports ``dia_model.api``."""
