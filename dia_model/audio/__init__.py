"""Audio: the DAC codec (waveforms <-> codes; imports transformers lazily) and audio files."""
