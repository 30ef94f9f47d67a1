"""Algorithmic latency (lookahead) of the exact mode: analytic, and checked by probes.

The analytic values come from the stream operators' ``need`` functions
(:mod:`snac_stream.latency`); the probes perturb the offline model's input after a
position and find the first output that changes. A probe over all frame phases gives the
worst case; ``phases`` probes only the first few phases of a period (a lower bound then,
flagged ``complete: false``). Probes always run on a CPU copy of the model.
"""

from __future__ import annotations

import math
import time

import numpy as np


def analytic(model) -> dict:
    from snac_stream.latency import decoder_latency, encoder_latency, end_to_end_latency

    enc, dec, e2e = encoder_latency(model), decoder_latency(model), end_to_end_latency(model)
    return {
        "encoder_algorithmic_samples": enc.samples,
        "encoder_algorithmic_ms": enc.ms,
        "decoder_algorithmic_samples": dec.samples,
        "decoder_algorithmic_ms": dec.ms,
        "e2e_algorithmic_samples": e2e.samples,
        "e2e_algorithmic_ms": e2e.ms,
    }


def probe(model, phases: int | None, progress=None) -> dict:
    """Encoder and decoder latency from perturbation probes.

    ``phases=None`` probes every phase of one alignment period (what
    ``probe_encoder_latency``/``probe_decoder_latency`` do); an int probes that many.
    ``progress(fraction)`` is called after each probe.
    """
    from snac_stream.latency import probe_decoder_first_changed, probe_encoder_need

    s0 = model.vq_strides[0]
    window = model.attn_window_size or 1
    period_blocks = math.lcm(s0, window) // s0
    period_ticks = math.lcm(s0, window)
    # the same phases probe_encoder_latency / probe_decoder_latency use
    blocks = list(range(4 * period_blocks, 5 * period_blocks))
    ticks = list(range(4 * period_ticks, 5 * period_ticks))
    if phases is not None:
        blocks, ticks = _spread(blocks, phases), _spread(ticks, phases)
    total = len(blocks) + len(ticks)
    done = 0
    t0 = time.perf_counter()
    enc_worst = None
    for b in blocks:
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
            "encoder_s": t_enc,
            "decoder_s": time.perf_counter() - t0 - t_enc,
        },
    }


def _spread(values: list[int], k: int) -> list[int]:
    """``k`` values spread over ``values`` (always including the first)."""
    if k >= len(values):
        return values
    idx = np.unique(np.linspace(0, len(values) - 1, max(k, 1)).round().astype(int))
    return [values[i] for i in idx]


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
