"""Named models: the published configurations, seeded random stand-ins and the default.

A model spec is one of:

- a local checkpoint directory (``config.json`` + weights),
- a hub id such as ``hubertsiuzdak/snac_24khz`` (downloaded through huggingface_hub),
- ``random:24khz`` / ``random:32khz`` / ``random:44khz`` (optionally ``:SEED``): the published
  architecture with seeded random weights. Codes and audio are meaningless, but every
  shape, rate and timing is that of the real model; tests and offline demos use these.
"""

from __future__ import annotations

import sys

import torch

from .checkpoint import CheckpointError
from .model import SNAC

PUBLISHED_CONFIGS: dict[str, dict] = {
    "24khz": dict(
        sampling_rate=24000,
        encoder_dim=48,
        encoder_rates=[2, 4, 8, 8],
        decoder_dim=1024,
        decoder_rates=[8, 8, 4, 2],
        attn_window_size=None,
        codebook_size=4096,
        codebook_dim=8,
        vq_strides=[4, 2, 1],
        noise=True,
        depthwise=True,
    ),
    "32khz": dict(
        sampling_rate=32000,
        encoder_dim=64,
        encoder_rates=[2, 3, 8, 8],
        decoder_dim=1536,
        decoder_rates=[8, 8, 3, 2],
        attn_window_size=32,
        codebook_size=4096,
        codebook_dim=8,
        vq_strides=[8, 4, 2, 1],
        noise=True,
        depthwise=True,
    ),
}
PUBLISHED_CONFIGS["44khz"] = {**PUBLISHED_CONFIGS["32khz"], "sampling_rate": 44100}
HUB_IDS = {name: f"hubertsiuzdak/snac_{name}" for name in PUBLISHED_CONFIGS}
DEFAULT_MODEL = HUB_IDS["24khz"]
DEFAULT_SEED = 0


def random_model(name: str = "24khz", seed: int = DEFAULT_SEED, **overrides) -> SNAC:
    """A published architecture (or ``overrides`` of it) with seeded random weights, eval mode."""
    if name not in PUBLISHED_CONFIGS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(PUBLISHED_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SNAC(**{**PUBLISHED_CONFIGS[name], **overrides})
    return model.eval()


def load_model(spec: str = DEFAULT_MODEL, *, fallback_to_random: bool = False, device: str = "cpu") -> SNAC:
    """Resolve a model spec (see module doc). With ``fallback_to_random``, a published hub id
    that cannot be downloaded is replaced by the seeded random model of the same
    architecture, announced loudly on stderr."""
    if spec.startswith("random:"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].lstrip("-").isdigit()):
            raise ValueError(f"bad model spec {spec!r}; use random:24khz, random:32khz[:SEED], ...")
        seed = int(parts[2]) if len(parts) == 3 else DEFAULT_SEED
        return random_model(parts[1], seed).to(device)
    try:
        return SNAC.from_pretrained(spec, device=device)
    except CheckpointError as e:
        arch = next((name for name, hub in HUB_IDS.items() if hub == spec), None)
        if not fallback_to_random or arch is None:
            raise
        print(
            f"\n!!! WARNING: {e}\n!!! Falling back to 'random:{arch}': the {arch} architecture with SEEDED "
            "RANDOM weights.\n!!! Codes, rates and timings are real; the audio is NOT meaningful.\n",
            file=sys.stderr,
        )
        return random_model(arch).to(device)
