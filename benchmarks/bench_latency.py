"""Algorithmic latency (lookahead) of the exact mode: analytic, and checked by probes.

The analytic values come from the stream operators' ``need`` functions
(:mod:`snac_stream.engine.latency`); the probes perturb the offline model's input after a
position and find the first output that changes. A probe over all frame phases gives the
worst case; ``phases`` probes only the first few phases of a period (a lower bound then,
flagged ``complete: false``). Probes always run on a CPU copy of the model.
"""

from __future__ import annotations

import math
import time

import numpy as np


def analytic(model) -> dict:
    from snac_stream.engine.latency import decoder_latency, encoder_latency, end_to_end_latency

    enc, dec, e2e = encoder_latency(model), decoder_latency(model), end_to_end_latency(model)
    return {
        "encoder_algorithmic_samples": enc.samples,
        "encoder_algorithmic_ms": enc.ms,
        "decoder_algorithmic_samples": dec.samples,
        "decoder_algorithmic_ms": dec.ms,
        "e2e_algorithmic_samples": e2e.samples,
        "e2e_algorithmic_ms": e2e.ms,
    }


def _encoder_need_near(model, block: int, guess: int, seed: int = 0) -> tuple[int, bool]:
    """The encoder probe of ``probe_encoder_need`` (perturb every input sample from P on,
    see whether coarse block ``block`` changes), evaluated only at ``guess - 1`` and
    ``guess``: if the block changes from ``guess - 1`` but not from ``guess``, ``guess`` is
    the need (3 encoder passes instead of ~17). Otherwise falls back to the full bisection.
    Returns (need, verified_at_guess)."""
    import torch

    from snac_stream.engine.latency import probe_encoder_need

    s0, fs = model.vq_strides[0], model.frame_size
    period_blocks = math.lcm(s0, model.attn_window_size or 1) // s0
    length = max((block + 2 * period_blocks + 8) * fs + model.pad_multiple, guess + 2 * fs)
    gen = torch.Generator().manual_seed(seed)
    x = (0.3 * torch.randn(1, 1, length, generator=gen, dtype=torch.float64)).to(model.dtype)

    def latent(audio):
        return model.encoder(model.preprocess(audio))[..., block * s0 : (block + 1) * s0]

    with torch.inference_mode():
        base = latent(x)

        def changed(p: int) -> bool:
            g = torch.Generator().manual_seed(seed + 1)
            y = x.clone()
            y[..., p:] += torch.randn(y[..., p:].shape, generator=g, dtype=torch.float64).to(y.dtype)
            return not torch.equal(latent(y), base)

        if 0 < guess < length and changed(guess - 1) and not changed(guess):
            return guess, True
    return probe_encoder_need(model, block, seed), False


def probe(model, phases: int | None, progress=None, bracket: bool = False) -> dict:
    """Encoder and decoder latency from perturbation probes.

    ``phases=None`` probes every phase of one alignment period (what
    ``probe_encoder_latency``/``probe_decoder_latency`` do); an int probes that many.
    ``bracket`` checks the encoder's analytic need at each phase with two perturbations
    instead of bisecting for it (see :func:`_encoder_need_near`); the decoder probe is
    cheap and always complete. ``progress(fraction)`` is called after each probe.
    """
    from snac_stream.engine.latency import _Needs, probe_decoder_first_changed, probe_encoder_need

    s0 = model.vq_strides[0]
    window = model.attn_window_size or 1
    period_blocks = math.lcm(s0, window) // s0
    period_ticks = math.lcm(s0, window)
    # the same phases probe_encoder_latency / probe_decoder_latency use
    blocks = list(range(4 * period_blocks, 5 * period_blocks))
    ticks = list(range(4 * period_ticks, 5 * period_ticks))
    if phases is not None:  # the phases the analytic model says are worst, first
        blocks, ticks = _worst_phases(model, blocks, ticks, phases)
    total = len(blocks) + len(ticks)
    done = 0
    t0 = time.perf_counter()
    enc_worst = None
    verified = []
    if bracket:
        enc_op = _Needs(model).encoder  # geometry only
    for b in blocks:
        if bracket:
            guess = int(enc_op.need(np.array([(int(b) + 1) * s0 - 1]))[0])
            need, ok = _encoder_need_near(model, int(b), guess)
            verified.append(ok)
        else:
            need = probe_encoder_need(model, int(b))
        lat = need - int(b) * model.frame_size - 1
        enc_worst = lat if enc_worst is None else max(enc_worst, lat)
        done += 1
        if progress:
            progress(done / total)
    t_enc = time.perf_counter() - t0
    dec_worst = None
    for q in ticks:
        lat = (q + 1) * model.decoder_hop - probe_decoder_first_changed(model, int(q)) - 1
        dec_worst = lat if dec_worst is None else max(dec_worst, lat)
        done += 1
        if progress:
            progress(done / total)
    sr = model.sample_rate
    return {
        "encoder_probe_samples": int(enc_worst),
        "encoder_probe_ms": 1000.0 * enc_worst / sr,
        "decoder_probe_samples": int(dec_worst),
        "decoder_probe_ms": 1000.0 * dec_worst / sr,
        "probe": {
            "encoder_blocks": [int(b) for b in blocks],
            "encoder_period_blocks": period_blocks,
            "decoder_ticks": [int(q) for q in ticks],
            "decoder_period_ticks": period_ticks,
            "complete": len(blocks) == period_blocks and len(ticks) == period_ticks,
            "encoder_method": "analytic need verified by 2 perturbations (bisection if not)"
            if bracket
            else "bisection (probe_encoder_need)",
            "encoder_verified_at_analytic": verified if bracket else None,
            "encoder_s": t_enc,
            "decoder_s": time.perf_counter() - t0 - t_enc,
        },
    }


def _worst_phases(model, blocks: list[int], ticks: list[int], k: int) -> tuple[list[int], list[int]]:
    """The ``k`` encoder blocks and decoder ticks with the largest analytic latency."""
    from snac_stream.engine.latency import _Needs

    k = max(1, k)
    s0, fs, hop = model.vq_strides[0], model.frame_size, model.decoder_hop
    needs = _Needs(model)  # geometry only
    enc, dec = needs.encoder, needs.decoder
    b = np.asarray(blocks)
    enc_lat = enc.need((b + 1) * s0 - 1) - b * fs - 1
    n = np.arange(0, (max(ticks) + 4 * (ticks[-1] - ticks[0] + 1) + 64) * hop)
    need = dec.need(n)
    dec_lat = [(q + 1) * hop - int(np.argmax(need > q)) - 1 for q in ticks]
    pick_b = sorted(np.argsort(-enc_lat, kind="stable")[:k])
    pick_t = sorted(np.argsort(-np.asarray(dec_lat), kind="stable")[:k])
    return [blocks[i] for i in pick_b], [ticks[i] for i in pick_t]


def latency_modes(an: dict, pr: dict) -> list[dict]:
    """One row per streaming mode. Only the exact mode exists so far."""
    return [
        {
            "mode": "exact",
            "encoder_ms": an["encoder_algorithmic_ms"],
            "decoder_ms": an["decoder_algorithmic_ms"],
            "e2e_ms": an["e2e_algorithmic_ms"],
            "encoder_probe_ms": pr["encoder_probe_ms"],
            "decoder_probe_ms": pr["decoder_probe_ms"],
            "max_abs_vs_exact": 0.0,
        }
    ]
