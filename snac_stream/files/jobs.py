"""Many files at once: plan inputs -> outputs, then encode or decode them through the batched
multi-stream engines, block by block, in bounded memory.

``batch`` streams (one per file, or one per channel) are in flight at once, shared by ``workers``
threads (default one per core, as the server's shards; each a sibling engine sharing the
weights). A worker keeps its streams in one
:class:`~snac_stream.engine.multistream.MultiStreamEncoder` / ``MultiStreamDecoder`` and feeds
each the same block size per step, so files started together stay in the same phase and step as
one batch; jobs start in order of length, so files of one length also end together; a finished
file is flushed and the next one starts in its place. A file that fails (unreadable, truncated,
wrong model, unwritable output) is reported and the others go on; its output is never written
(temporary name, renamed at the end).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from snac_stream.audio.files import AudioFileError, audio_info
from snac_stream.engine.batcher import default_workers
from snac_stream.engine.multistream import MultiStreamDecoder, MultiStreamEncoder
from snac_stream.engine.tokens import ORPHEUS_AUDIO_OFFSET

from .formats import FORMATS, JsonlCollector, code_header
from .plan import FileResult, Job, Summary
from .tasks import DecodeTask, EncodeTask, block_samples

#: audio per step (s): one file at a time (big blocks run the convolutions efficiently), or several
#: batched (shorter: a batch's activations grow with streams x block; measured on the 24 kHz model,
#: 8 x 0.35 s decoded with ~1.06 GiB peak RSS, and the cost per audio second is the same)
BLOCK_SECONDS = (1.0, 0.17)


def _seconds(block_seconds: float | None, batch: int, jobs: list) -> float:
    if block_seconds is not None:
        return block_seconds
    return BLOCK_SECONDS[1] if batch > 1 and len(jobs) > 1 else BLOCK_SECONDS[0]


def _message(e: BaseException) -> str:
    return str(e) if str(e) else type(e).__name__


class _Run:
    """Shared state of one run's workers: the job queue, results, progress, the stop flag."""

    def __init__(self, items: list[tuple[int, Job]], progress):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        for item in items:
            self.queue.put(item)
        self.results: dict[int, FileResult] = {}
        self.lock = threading.Lock()
        self.progress = progress
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def next_job(self):
        if self.stop.is_set():
            return None
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None

    def record(self, index: int, result: FileResult) -> None:
        with self.lock:
            self.results[index] = result
        if self.progress is not None:
            self.progress.done(result)

    def advance(self, seconds: float) -> None:
        if self.progress is not None and seconds:
            self.progress.advance(seconds)


#: start files in generations: a worker takes new files only when all of its files are done, so
#: files of one generation (about the same length: jobs start in order of length) start, step and
#: end together, and a newcomer's first step is not a batch of one (its state is not yet like the
#: others'). False: refill each free slot at once.
GENERATIONS = True


def _worker(run: _Run, engine, make_task: Callable, batch: int, block: int, rate: float) -> None:
    active: list = []
    try:
        while True:
            refill = not (GENERATIONS and active)
            while refill and sum(len(t.ids) for t in active) < batch:
                item = run.next_job()
                if item is None:
                    break
                index, job = item
                try:
                    task = make_task(index, job)
                    task.open(engine)
                except Exception as e:  # unreadable input, wrong model, unwritable output
                    run.record(index, FileResult(job.name, None, error=_message(e)))
                    continue
                task.index = index
                active.append(task)
            if not active:
                return
            inputs, stepped = {}, []
            for task in list(active):
                try:
                    x, n = task.inputs(block)
                except Exception as e:  # e.g. a truncated or corrupt file, found mid-way
                    _fail(run, engine, active, task, e)
                    continue
                inputs.update(x)
                stepped.append((task, n))
            outputs = engine.step(inputs)
            run.advance(sum(n for _, n in stepped) / rate)
            for task, _ in stepped:
                try:
                    task.take(outputs)
                    if task.exhausted:
                        active.remove(task)
                        run.record(task.index, task.finish(engine))
                except Exception as e:
                    _fail(run, engine, active, task, e)
    except BaseException as e:  # a bug or an interrupt: stop everyone, leave no partial output
        run.error = run.error or e
        run.stop.set()
    finally:
        for task in active:
            task.abort()


def _fail(run: _Run, engine, active: list, task, e: BaseException) -> None:
    if task in active:
        active.remove(task)
    for i in task.ids:
        if i in engine:
            engine.close(i)
    task.abort()
    run.record(task.index, FileResult(task.job.name, None, error=_message(e)))


def _run(jobs, others, engine, make_task, *, batch, workers, block, rate, progress, length) -> Summary:
    """Run ``jobs`` on ``workers`` threads, ``batch`` streams in flight in all. When batching, the
    jobs start in order of ``length(job)`` (a cheap look at each file): files of equal length start
    and end together, so even their first and last (short) blocks step as one batch."""
    start, cpu = time.perf_counter(), time.process_time()
    workers = max(1, min(default_workers() if workers is None else workers, batch, len(jobs)))
    order = list(range(len(jobs)))
    if batch > 1 and len(jobs) > 1:
        order.sort(key=lambda i: length(jobs[i]))
    run = _Run([(i, jobs[i]) for i in order], progress)
    engines = [engine] + [engine.sibling() for _ in range(workers - 1)]
    share = -(-batch // workers)  # streams in flight per worker
    threads = [
        threading.Thread(target=_worker, args=(run, e, make_task, share, block, rate), daemon=True)
        for e in engines
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        run.stop.set()
        for t in threads:
            t.join()
        raise
    if run.error is not None:
        raise run.error
    done = [run.results[i] for i in sorted(run.results)]
    batches = Counter()
    for e in engines:
        batches.update(e.stats.group_sizes)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Summary(results=others + done, wall_s=wall, cpu_s=cpu, batches=batches)


def encode_files(
    jobs: list[Job],
    model,
    *,
    format: str = "snac",
    channels: str = "mix",
    lm_offset: int = ORPHEUS_AUDIO_OFFSET,
    batch: int = 8,
    workers: int | None = None,
    block_seconds: float | None = None,
    collector: JsonlCollector | None = None,
    others: Sequence[FileResult] = (),
    progress=None,
) -> Summary:
    """Encode ``jobs`` (see :func:`plan_jobs`) to ``format``: ``batch`` streams (files, or channels
    with ``channels="each"``) in flight at once, shared by ``workers`` threads (default: one per
    core). ``block_seconds`` per step (default :data:`BLOCK_SECONDS`, shorter when batching)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; one of {sorted(FORMATS)}")
    if not jobs:
        return Summary(results=list(others))
    engine = MultiStreamEncoder(model, max_streams=max(batch, 1) + 64, max_batch=batch)

    def make_task(index, job):
        return EncodeTask(index, job, model, format, channels, lm_offset, collector)

    block = block_samples(model, _seconds(block_seconds, batch, jobs))

    def length(job: Job) -> float:
        try:
            return audio_info(job.source).seconds
        except AudioFileError:
            return 0.0

    return _run(
        jobs, list(others), engine, make_task, batch=batch, workers=workers, block=block,
        rate=model.sample_rate, progress=progress, length=length,
    )  # fmt: skip


def decode_files(
    jobs: list[Job],
    model,
    *,
    seed: int | None = 0,
    audio_format: str | None = None,
    batch: int = 8,
    workers: int | None = None,
    block_seconds: float | None = None,
    others: Sequence[FileResult] = (),
    progress=None,
) -> Summary:
    """Decode ``.snac``/``.npz`` ``jobs`` to audio trimmed to the encoded length: ``audio_format``
    ``"wav"`` (float32) or ``"flac"`` (24-bit), default by each output's suffix."""
    if not jobs:
        return Summary(results=list(others))
    engine = MultiStreamDecoder(model, max_streams=max(batch, 1) + 64, max_batch=batch)
    frames = max(1, round(_seconds(block_seconds, batch, jobs) * model.sample_rate / model.frame_size))

    def make_task(index, job):
        return DecodeTask(index, job, model, seed, frames, audio_format)

    def length(job: Job) -> int:
        try:
            return code_header(job.source).frames
        except Exception:  # noqa: BLE001 - a bad file fails properly when its turn comes
            return 0

    return _run(
        jobs, list(others), engine, make_task, batch=batch, workers=workers, block=frames,
        rate=model.sample_rate / model.frame_size, progress=progress, length=length,
    )  # fmt: skip


__all__ = ["decode_files", "encode_files"]
