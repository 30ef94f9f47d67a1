"""The loss ledger that both listeners keep (ListenStream in the client, CodeReceiver):
over random losses, reorderings, duplicates and late joins, after END every frame of the
stream is received, lost or missed at join, exactly once."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_endpoints import audio, offline_codes, tiny_model

from snac_stream.net.client import ListenStream
from snac_stream.net.ledger import LossLedger, StreamCounts
from snac_stream.net.receiver import CodeReceiver
from snac_stream.protocol.packets import ModelInfo, stream_packets


def _stream(rng: np.random.Generator, n_packets: int) -> list[tuple[int, int, int]]:
    """(seq, first_frame, n_frames) of a stream's CODES packets."""
    out, frame = [], 0
    for seq in range(n_packets):
        n = int(rng.integers(1, 4))
        out.append((seq, frame, n))
        frame += n
    return out


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_packets=st.integers(0, 12),
    live_join=st.booleans(),
    p_drop=st.sampled_from([0.0, 0.2, 0.6]),
    p_swap=st.sampled_from([0.0, 0.3]),
    p_dup=st.sampled_from([0.0, 0.2]),
)
def test_every_frame_is_received_lost_or_missed_once(seed, n_packets, live_join, p_drop, p_swap, p_dup):
    rng = np.random.default_rng(seed)
    packets = _stream(rng, n_packets)
    total = sum(n for _, _, n in packets)
    join = int(rng.integers(0, n_packets + 1))  # packets before it went by before the listener came
    arrived = [p for p in packets[join:] if rng.random() >= p_drop]
    arrived += [p for p in arrived if rng.random() < p_dup]
    arrived.sort(key=lambda p: p[0] + (rng.random() < p_swap) * 1.5)  # some arrive a packet late
    ledger = LossLedger(StreamCounts(), live_join)
    assert not ledger.hello(7)
    gaps = [ledger.codes(*p) for p in arrived]
    tail = ledger.end(n_packets, total, complete=True)
    c = ledger.counts
    assert c.frames_received + c.frames_lost + c.frames_missed_at_join == total
    assert sum(g for g in gaps if g) + tail == c.frames_lost  # what a receiver conceals
    assert c.frames_received == sum(p[2] for p, g in zip(arrived, gaps, strict=True) if g is not None)
    assert c.packets_late == gaps.count(None)
    assert (c.streams, c.streams_completed, c.streams_aborted) == (1, 1, 0) and not ledger.open
    if not live_join:
        assert c.frames_missed_at_join == 0
    if arrived and arrived == sorted(set(arrived)) and live_join:
        first = arrived[0]
        assert c.frames_missed_at_join == first[1]
        in_order = [p for p in packets if p[0] >= first[0]]
        assert c.packets_lost == len(in_order) - len(arrived)
    if arrived == packets:
        assert (c.frames_lost, c.packets_lost, c.packets_late, c.frames_missed_at_join) == (0, 0, 0, 0)


def test_hello_resumes_or_aborts_and_nothing_counts_without_a_stream():
    ledger = LossLedger(StreamCounts())
    assert ledger.codes(0, 0, 2) is None and ledger.end(1, 2, True) == 0  # no stream open
    assert not ledger.hello(1, "model")
    assert ledger.codes(0, 0, 2) == 0
    assert ledger.hello(1, "model")  # the same stream again: a reconnected listener
    assert not ledger.hello(1, "other model")  # same id, other model: a new stream
    assert ledger.codes(0, 4, 1) == 0  # joined at frame 4
    ledger.abort()
    ledger.abort()
    c = ledger.counts
    assert (c.streams, c.streams_resumed, c.streams_aborted, c.streams_completed) == (2, 1, 2, 0)
    assert (c.frames_received, c.frames_missed_at_join, c.frames_lost) == (3, 4, 0)


def test_both_listeners_count_a_lossy_stream_alike():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    codes = offline_codes(model, audio(16 * 30))
    packets = stream_packets(codes, info, 16 * 30, 2, stream_id=5)  # HELLO, 15 CODES, END
    arrived = [packets[0], *packets[4:7], packets[9], packets[8], packets[8], *packets[11:]]
    receiver, listener = CodeReceiver(model), ListenStream("ws://127.0.0.1:9/unused")
    for p in arrived:
        receiver.on_packet(p)
        listener._account(p)
    counts = [
        {k: getattr(s, k) for k in StreamCounts.__dataclass_fields__}
        for s in (receiver.stats, listener.stats)
    ]
    assert counts[0] == counts[1]
    assert (counts[0]["frames_missed_at_join"], counts[0]["frames_lost"], counts[0]["frames_received"]) == (
        6,
        6,
        18,
    )
    assert counts[0]["packets_lost"] == 3
    assert counts[0]["packets_late"] == 2 and counts[0]["streams_completed"] == 1
