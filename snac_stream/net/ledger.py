"""One listener's account of its streams: what arrived, what was lost, what it missed by joining late.

Both listeners of a code stream keep it: :class:`~snac_stream.net.client.ListenStream` (packets
from a room) and :class:`~snac_stream.net.receiver.CodeReceiver` (packets to audio). After each
stream's END::

    frames_received + frames_lost + frames_missed_at_join == END.total_frames

(frames of packets that come too late, behind frames already received or counted lost, are
``frames_late`` and not received).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["StreamCounts", "LossLedger"]


@dataclass
class StreamCounts:
    """Cumulative counters of a listener's streams (the listeners' stats extend it)."""

    streams: int = 0  #: streams started (HELLO with a new stream_id)
    streams_resumed: int = 0  #: HELLO repeating the open stream (a listener that reconnected)
    streams_completed: int = 0  #: END with reason COMPLETE
    streams_aborted: int = 0  #: END with another reason, ERROR, a new HELLO, or lost mid-stream
    frames_received: int = 0
    frames_lost: int = 0  #: frames missing inside a stream (gaps, a lost tail)
    frames_missed_at_join: int = 0  #: frames before the first CODES of a late-joined stream
    packets_lost: int = 0  #: gaps in CODES ``seq`` after joining
    packets_late: int = 0  #: CODES for frames already received or counted lost (discarded)
    frames_late: int = 0


class LossLedger:
    """Tracks the open stream's position (frame, seq) and counts into ``counts``.

    Feed it the packets in arrival order: :meth:`hello`, :meth:`codes`, :meth:`end`,
    :meth:`abort`. ``live_join=True``: a stream starts at the first CODES received (what came
    before is missed at join); ``False``: at frame 0 and seq 0 (what came before is lost).
    """

    def __init__(self, counts: StreamCounts, live_join: bool = True) -> None:
        self.counts = counts
        self.live_join = live_join
        self.stream: tuple[int, Any] | None = None  #: (stream_id, model info) of the open stream
        self.joined = False  #: the position is known (a CODES arrived, or not live_join)
        self.next_frame = 0  #: absolute index of the next coarse frame expected
        self.next_seq = 0

    @property
    def open(self) -> bool:
        return self.stream is not None

    def hello(self, stream_id: int, info: Any = None) -> bool:
        """A HELLO: True if it repeats the open stream (resumed); else the open stream is aborted
        and a new one starts."""
        if self.stream == (stream_id, info):
            self.counts.streams_resumed += 1
            return True
        self.abort()
        self.stream = (stream_id, info)
        self.joined = not self.live_join
        self.next_frame = self.next_seq = 0
        self.counts.streams += 1
        return False

    def codes(self, seq: int, first_frame: int, n_frames: int) -> int | None:
        """A CODES packet: the frames lost just before it (>= 0), or None to discard it (late, empty,
        or no open stream)."""
        c = self.counts
        if self.stream is None:
            return None
        if not self.joined:
            self.joined = True
            self.next_frame, self.next_seq = first_frame, seq
            c.frames_missed_at_join += first_frame
        if n_frames == 0:
            return None
        if first_frame < self.next_frame:
            c.packets_late += 1
            c.frames_late += n_frames
            return None
        gap = first_frame - self.next_frame
        c.frames_lost += gap
        c.packets_lost += max(seq - self.next_seq, 0)
        c.frames_received += n_frames
        self.next_frame, self.next_seq = first_frame + n_frames, seq + 1
        return gap

    def end(self, seq: int, total_frames: int, complete: bool) -> int:
        """An END: closes the stream; returns the frames lost at its tail (0 if it was never joined:
        then all its frames were missed at join)."""
        if self.stream is None:
            return 0
        c = self.counts
        tail = max(total_frames - self.next_frame, 0)
        if self.joined:
            c.frames_lost += tail
            c.packets_lost += max(seq - self.next_seq, 0)
        else:
            c.frames_missed_at_join += tail
            tail = 0
        if complete:
            c.streams_completed += 1
        else:
            c.streams_aborted += 1
        self.stream = None
        return tail

    def abort(self) -> None:
        """The open stream (if any) ends without END (ERROR, a new stream, connection lost)."""
        if self.stream is not None:
            self.counts.streams_aborted += 1
            self.stream = None
