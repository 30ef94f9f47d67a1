"""Bounded, thread-safe float32 mono buffers for audio callbacks.

``RingBuffer`` is a FIFO of samples with preallocated storage: writes never block on space and never
grow memory; when full the OLDEST samples are dropped and counted. ``JitterBuffer`` wraps one for
playback: it withholds output until a prefill level is reached and zero-fills underflows.
All sizes are in samples unless a name says ``_ms`` (milliseconds) or ``_s`` (seconds).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["JitterBuffer", "RingBuffer"]


def _as_mono(samples: np.ndarray) -> np.ndarray:
    """View ``samples`` as a 1-D float32 array (copies only if dtype/layout require it)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,) or (n, 1), got {x.shape}")
    return x


class RingBuffer:
    """Bounded FIFO of float32 mono samples; safe for one writer and readers on other threads.

    ``write`` is meant for audio callbacks: it only takes a short lock, copies, and never allocates
    beyond a dtype conversion of its input. On overflow the oldest samples are discarded and counted
    in ``overflow_samples`` / ``overflow_events``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be a positive number of samples, got {capacity}")
        self._buf = np.zeros(int(capacity), dtype=np.float32)
        self._cond = threading.Condition(threading.Lock())
        self._start = 0  # index of the oldest sample
        self._size = 0
        self._closed = False
        self.written_samples = 0  #: samples offered to ``write`` (including later-dropped ones)
        self.read_samples = 0  #: samples returned by the read methods
        self.overflow_samples = 0  #: oldest samples dropped because the buffer was full
        self.overflow_events = 0  #: number of writes that had to drop samples

    @property
    def capacity(self) -> int:
        """Maximum number of buffered samples."""
        return self._buf.size

    @property
    def available(self) -> int:
        """Number of samples that can be read now."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        """True after ``close()``: blocking reads return immediately with what is left."""
        return self._closed

    def write(self, samples: np.ndarray) -> int:
        """Append samples (shape (n,) or (n, 1)); never blocks on space. Returns samples dropped."""
        x = _as_mono(samples)
        n = x.size
        cap = self._buf.size
        with self._cond:
            self.written_samples += n
            drop = max(0, self._size + n - cap)
            if n >= cap:  # only the newest ``cap`` samples survive
                x, n = x[n - cap :], cap
                self._start, self._size = 0, 0
            elif drop:
                self._start = (self._start + drop) % cap
                self._size -= drop
            end = (self._start + self._size) % cap
            first = min(n, cap - end)
            self._buf[end : end + first] = x[:first]
            self._buf[: n - first] = x[first:]
            self._size += n
            if drop:
                self.overflow_samples += drop
                self.overflow_events += 1
            self._cond.notify_all()
        return drop

    def _pop_locked(self, out: np.ndarray) -> int:
        cap = self._buf.size
        k = min(out.shape[0], self._size)
        first = min(k, cap - self._start)
        out[:first] = self._buf[self._start : self._start + first]
        out[first:k] = self._buf[: k - first]
        self._start = 0 if k == self._size else (self._start + k) % cap
        self._size -= k
        self.read_samples += k
        return k

    def read_into(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` oldest samples into ``out`` (1-D float32); returns the count copied."""
        with self._cond:
            return self._pop_locked(out)

    def read(self, max_samples: int | None = None) -> np.ndarray:
        """Return (and remove) all available samples, at most ``max_samples``; may be empty."""
        with self._cond:
            k = self._size if max_samples is None else max(0, min(int(max_samples), self._size))
            out = np.empty(k, dtype=np.float32)
            self._pop_locked(out)
        return out

    def read_blocking(
        self, min_samples: int, timeout: float | None = None, max_samples: int | None = None
    ) -> np.ndarray:
        """Wait until ``min_samples`` are available (or ``timeout`` seconds pass, or the buffer is
        closed), then return what is available (at most ``max_samples``). May return fewer than
        ``min_samples`` on timeout/close; never raises on timeout."""
        if min_samples > self.capacity:
            raise ValueError(f"min_samples={min_samples} exceeds capacity={self.capacity}")
        with self._cond:
            self._cond.wait_for(lambda: self._size >= min_samples or self._closed, timeout)
        return self.read(max_samples)

    def clear(self) -> int:
        """Discard all buffered samples (counters are kept); returns how many were discarded."""
        with self._cond:
            k, self._start, self._size = self._size, 0, 0
        return k

    def close(self) -> None:
        """Mark end of data: wakes blocked readers. Writes are still accepted; see ``reopen``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Undo ``close()`` so that ``read_blocking`` waits again."""
        with self._cond:
            self._closed = False


class JitterBuffer:
    """Playback buffer between a producer (decoder) and an output callback.

    Output starts once ``prefill_ms`` of audio is buffered (or ``finish()`` was called). ``pull`` always
    returns exactly the requested number of samples, zero-filling on underflow; after an underflow it
    re-enters prefill (``rebuffer=True``) so that playback resumes with a cushion instead of stuttering.
    ``push`` never blocks; on overflow the oldest samples are dropped (``overflow_samples``).
    """

    def __init__(
        self, sample_rate: int, prefill_ms: float = 60.0, capacity_s: float = 10.0, rebuffer: bool = True
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.prefill_samples = max(0, round(prefill_ms * self.sample_rate / 1000.0))
        self._ring = RingBuffer(max(1, round(capacity_s * self.sample_rate)))
        if self.prefill_samples > self._ring.capacity:
            raise ValueError(f"prefill_ms={prefill_ms} exceeds capacity_s={capacity_s}")
        self.rebuffer = rebuffer
        self._lock = threading.Lock()
        self._prefilling = True
        self._finished = False
        self.played_samples = 0  #: real (non-filler) samples handed to the output
        self.pulled_samples = 0  #: total samples handed out, including zero filler
        self.underflow_samples = 0  #: zeros inserted because data ran out mid-playback
        self.underflow_events = 0  #: number of pulls that ran out mid-playback

    @property
    def capacity(self) -> int:
        """Maximum buffered samples."""
        return self._ring.capacity

    @property
    def available(self) -> int:
        """Buffered samples not yet played."""
        return self._ring.available

    def __len__(self) -> int:
        return self._ring.available

    @property
    def buffered_ms(self) -> float:
        """Buffered audio in milliseconds."""
        return 1000.0 * self._ring.available / self.sample_rate

    @property
    def overflow_samples(self) -> int:
        """Oldest samples dropped by ``push`` because the buffer was full."""
        return self._ring.overflow_samples

    @property
    def prefilling(self) -> bool:
        """True while output is withheld until ``prefill_samples`` are buffered."""
        return self._prefilling

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def drained(self) -> bool:
        """True once ``finish()`` was called and every buffered sample has been pulled."""
        return self._finished and self._ring.available == 0

    def push(self, samples: np.ndarray) -> int:
        """Queue samples for playback; never blocks. Clears a previous ``finish()``. Returns dropped."""
        with self._lock:
            if self._finished and self._ring.available == 0:
                self._prefilling = True  # a new segment after a drained one starts with prefill again
            self._finished = False
            return self._ring.write(samples)

    def finish(self) -> None:
        """Mark end of stream: the remaining samples play out without waiting for prefill."""
        with self._lock:
            self._finished = True

    def free_space(self) -> int:
        """Samples that can be pushed without dropping anything."""
        return self._ring.capacity - self._ring.available

    def pull_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (1-D float32) completely, zero-padding; returns the real samples written."""
        n = out.shape[0]
        with self._lock:
            if self._prefilling:
                if self._finished or self._ring.available >= self.prefill_samples:
                    self._prefilling = False
                else:
                    out[:] = 0.0
                    self.pulled_samples += n
                    return 0
            k = self._ring.read_into(out)
            if k < n:
                out[k:] = 0.0
                if not self._finished:  # running dry at end of stream is not an underflow
                    self.underflow_samples += n - k
                    self.underflow_events += 1
                    self._prefilling = self.rebuffer
            self.played_samples += k
            self.pulled_samples += n
            return k

    def pull(self, n: int) -> np.ndarray:
        """Return exactly ``n`` samples for output (zeros while prefilling or on underflow)."""
        out = np.empty(int(n), dtype=np.float32)
        self.pull_into(out)
        return out

    def clear(self) -> None:
        """Drop buffered audio and re-enter prefill (counters are kept)."""
        with self._lock:
            self._ring.clear()
            self._prefilling = True
            self._finished = False
