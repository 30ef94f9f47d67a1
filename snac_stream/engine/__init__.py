"""Engines: streaming encoder and decoder, LM token decoding, many streams at once, latency.

``encoder``/``decoder`` (one stream, or a batch stepped together), ``token_decoder`` and
``tokens`` (tick-ordered LM token streams), ``multistream`` (independent streams batched per
step), ``batcher`` (server-side: sessions on shared multi-stream engines, one shard per core),
``token_pool`` (LM token streams as sessions on those engines), ``conceal`` (lost frames),
``latency`` (analytic, from the operators' geometry, and probes of the offline model).
"""
