"""The model's published limits, as plain numbers a caller can check against without loading it.

A leaf: imports nothing. A loaded model's own config may differ (``Dia.config``); these are the
values of the released Dia checkpoints, which the pipeline's driver (no model loaded) checks with.
"""

SCRIPT_MAX_BYTES = 1024  # encoder positions: the longest script in UTF-8 bytes, [S1]/[S2] as one byte each
WINDOW_FRAMES = 3072  # decoder positions: one generation's whole timeline, BOS and prompt included
FRAME_RATE = 44100 / 512  # DAC frames per second
WINDOW_S = 35.0  # one generation: 3,072 frames at 44,100/512 frames/s, less the delay pattern
MAX_TAIL_S = 10.0  # long form: the longest tail carried into the next chunk (the seed's 5-10 s prompts)
END_TAG_BYTES = 5  # " [S1]": what an end tag adds to a script
MAX_SEED = 2**63 - 1

__all__ = ["SCRIPT_MAX_BYTES", "WINDOW_FRAMES", "FRAME_RATE", "WINDOW_S", "MAX_TAIL_S", "END_TAG_BYTES", "MAX_SEED"]
