"""SNAC (Multi-Scale Neural Audio Codec), weight-compatible with the reference `snac` package."""

from .checkpoint import CheckpointError
from .model import SNAC
from .noise import NoiseSource
from .registry import DEFAULT_MODEL, HUB_IDS, PUBLISHED_CONFIGS, load_model, random_model

__all__ = [
    "SNAC",
    "CheckpointError",
    "NoiseSource",
    "DEFAULT_MODEL",
    "HUB_IDS",
    "PUBLISHED_CONFIGS",
    "load_model",
    "random_model",
]
