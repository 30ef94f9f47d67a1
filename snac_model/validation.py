"""Argument checks with errors that name the problem and what to do."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import SNAC

DIM_HEAD = 64  # LocalMHA head size (fixed by the published architecture)


def _positive_ints(name: str, value, allow_empty: bool = False) -> list[int]:
    if isinstance(value, int | str) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    values = list(value)
    if not values and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    return values


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_config(**cfg) -> dict:
    """Validate constructor arguments; return them as a JSON-able dict (``config.json``)."""
    _positive_int("sampling_rate", cfg["sampling_rate"])
    encoder_dim = _positive_int("encoder_dim", cfg["encoder_dim"])
    decoder_dim = _positive_int("decoder_dim", cfg["decoder_dim"])
    encoder_rates = _positive_ints("encoder_rates", cfg["encoder_rates"])
    decoder_rates = _positive_ints("decoder_rates", cfg["decoder_rates"])
    strides = _positive_ints("vq_strides", cfg["vq_strides"])
    codebook_size = _positive_int("codebook_size", cfg["codebook_size"])
    _positive_int("codebook_dim", cfg["codebook_dim"])
    if codebook_size < 2:
        raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
    if 1 in decoder_rates:
        raise ValueError(
            f"decoder_rates {decoder_rates}: a rate of 1 is not supported (its transposed conv would "
            "need output_padding 1 >= stride 1); drop the block or use a rate >= 2"
        )
    bad = [s for s in strides if strides[0] % s]
    if bad:
        raise ValueError(
            f"vq_strides {strides}: every stride must divide the coarsest one ({strides[0]}) so that "
            f"all levels of a coarse frame line up; {bad} do not"
        )
    latent = encoder_dim * 2 ** len(encoder_rates)
    if cfg["latent_dim"] is not None and cfg["latent_dim"] != latent:
        raise ValueError(
            f"latent_dim={cfg['latent_dim']} does not match the encoder output "
            f"(encoder_dim * 2**len(encoder_rates) = {latent}); leave latent_dim as null"
        )
    if decoder_dim % 2 ** len(decoder_rates):
        raise ValueError(
            f"decoder_dim={decoder_dim} must be divisible by 2**len(decoder_rates) = "
            f"{2 ** len(decoder_rates)} (each decoder block halves the channels)"
        )
    window = cfg["attn_window_size"]
    if window is not None:
        _positive_int("attn_window_size", window)
        for name, dim in (("encoder latent dim", latent), ("decoder_dim", decoder_dim)):
            if dim % DIM_HEAD:
                raise ValueError(
                    f"attention needs channel counts that are multiples of {DIM_HEAD}: {name} is {dim}; "
                    "change the dims or set attn_window_size to null"
                )
    for flag in ("noise", "depthwise"):
        if not isinstance(cfg[flag], bool):
            raise ValueError(f"{flag} must be true or false, got {cfg[flag]!r}")
    out = dict(cfg)
    for key in ("encoder_rates", "decoder_rates", "vq_strides"):
        out[key] = list(out[key])
    return out


def check_audio(audio, model: SNAC, batch_size: int | None = None) -> torch.Tensor:
    """Audio must be a float tensor ``[B, 1, T]``; returned on the model's device and dtype."""
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor [batch, 1, samples], got {type(audio).__name__}")
    if audio.ndim != 3 or audio.shape[1] != 1:
        hint = " (add the channel axis: audio[:, None, :])" if audio.ndim == 2 else ""
        hint = " (add batch and channel axes: audio[None, None, :])" if audio.ndim == 1 else hint
        if audio.ndim == 3 and audio.shape[1] != 1:
            hint = (
                f" (SNAC is mono: got {audio.shape[1]} channels; mix down, e.g. audio.mean(1, keepdim=True))"
            )
        raise ValueError(f"audio must have shape [batch, 1, samples], got {tuple(audio.shape)}{hint}")
    if not audio.is_floating_point():
        raise TypeError(
            f"audio must be floating point in [-1, 1], got {audio.dtype}; "
            "convert integer PCM first, e.g. int16 / 32768"
        )
    if batch_size is not None and audio.shape[0] != batch_size:
        raise ValueError(
            f"audio batch is {audio.shape[0]}, this stream was created for batch_size={batch_size}"
        )
    if audio.shape[0] == 0:
        raise ValueError("audio batch is empty (batch size 0)")
    if audio.numel() and not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    return audio.to(device=model.device, dtype=model.dtype)


def ticks_covered(lengths: Sequence[int], strides: Sequence[int], start: int = 0) -> int | None:
    """End tick ``t1`` such that level i carries tokens ``ceil(start/s_i) .. ceil(t1/s_i)-1``.

    Returns the largest such ``t1`` (the ticks whose tokens are all known), or ``None`` if
    the lengths do not correspond to whole ticks.
    """
    firsts = [-(-start // s) for s in strides]
    t1 = min((first + n) * s for first, n, s in zip(firsts, lengths, strides, strict=True))
    t1 = max(t1, start)
    ok = all(-(-t1 // s) - first == n for first, n, s in zip(firsts, lengths, strides, strict=True))
    return t1 if ok else None


def check_codes(
    codes, model: SNAC, batch_size: int | None = None, start_tick: int = 0
) -> tuple[list[torch.Tensor], int]:
    """Codes must be ``n_codebooks`` integer tensors ``[B, T_i]`` in ``[0, codebook_size)`` whose
    lengths cover whole ticks from ``start_tick``. Returns (codes as long on the model's
    device, end tick)."""
    n = model.n_codebooks
    if isinstance(codes, torch.Tensor) or not isinstance(codes, Sequence):
        raise TypeError(
            f"codes must be a list of {n} tensors [batch, frames] (one per level), got {type(codes)}"
        )
    if len(codes) != n:
        raise ValueError(f"expected codes for {n} levels (vq_strides {model.vq_strides}), got {len(codes)}")
    out = []
    for i, c in enumerate(codes):
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"codes[{i}] must be a torch.Tensor, got {type(c).__name__}")
        if c.dtype == torch.bool or c.is_floating_point() or c.is_complex():
            raise TypeError(f"codes[{i}] must be an integer tensor, got {c.dtype}")
        if c.ndim != 2:
            raise ValueError(f"codes[{i}] must have shape [batch, frames], got {tuple(c.shape)}")
        if c.numel():
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi >= model.codebook_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"codes[{i}] has value {bad} outside [0, {model.codebook_size}) (codebook_size)"
                )
        out.append(c.to(device=model.device, dtype=torch.long))
    batches = {c.shape[0] for c in out}
    if len(batches) != 1:
        raise ValueError(f"all levels must have the same batch size, got {[c.shape[0] for c in out]}")
    batch = batches.pop()
    if batch == 0:
        raise ValueError("codes batch is empty (batch size 0)")
    if batch_size is not None and batch != batch_size:
        raise ValueError(f"codes batch is {batch}, this stream was created for batch_size={batch_size}")
    lengths = [c.shape[1] for c in out]
    end = ticks_covered(lengths, model.vq_strides, start_tick)
    if end is None:
        expect = [math.ceil(lengths[0] * model.vq_strides[0] / s) for s in model.vq_strides]
        raise ValueError(
            f"code lengths {lengths} per level do not form whole ticks for vq_strides {model.vq_strides} "
            f"(starting at tick {start_tick}); e.g. {lengths[0]} coarse codes need lengths {expect}"
        )
    return out, end
