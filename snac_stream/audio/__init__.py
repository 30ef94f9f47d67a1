"""Audio in and out: sounddevice microphone and speaker, ring and jitter buffers, audio files."""
