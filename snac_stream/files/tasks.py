"""One file in flight through a multi-stream engine: an encode task (audio reader -> code sink)
or a decode task (code source -> audio writer). The runner in :mod:`.jobs` drives them:
``open(engine)``, then per step ``inputs(block)`` / ``take(outputs)``, then ``finish(engine)``
(flush, write, rename) or ``abort()`` (close, delete the temporary output)."""

from __future__ import annotations

import os

import numpy as np
import torch

from snac_stream.audio.files import AudioReader, WavWriter, audio_format
from snac_stream.protocol.container import SnacHeader

from .formats import CodeSource, make_sink, model_info, temporary_name
from .plan import FileResult, Job


class EncodeTask:
    """One input file being encoded: its reader, its engine stream ids, its sink."""

    def __init__(self, index: int, job: Job, model, fmt: str, channels: str, lm_offset: int, collector):
        self.job = job
        self.reader = AudioReader(job.source, model.sample_rate, channels)
        self.ids = [(index, s) for s in range(self.reader.streams)]
        self.model = model
        info = self.reader.info
        try:
            self.sink = make_sink(
                fmt,
                job.output,
                model_info(model),
                source=job.name,
                lm_offset=lm_offset,
                collector=collector,
                sample_rate=info.sample_rate,
                channels=info.channels,
                length=info.frames,
                streams=self.reader.streams,
                notes=self.reader.conversions,
            )
        except BaseException:
            self.reader.close()
            raise

    def open(self, engine) -> None:
        for i in self.ids:
            engine.open(i)

    def inputs(self, block: int) -> tuple[dict, int]:
        """The next ``block`` samples per stream (a multiple of ``pad_multiple``). The last, shorter
        block gets the zeros offline ``encode`` pads with (up to a multiple of ``pad_multiple``):
        every block then has a length other files' blocks can share a batch with."""
        x = self.reader.read(block)
        n = x.shape[1]
        pad = -n % self.model.pad_multiple
        if pad:
            x = np.pad(x, ((0, 0), (0, pad)))
        data = torch.from_numpy(x)
        return ({i: data[s] for s, i in enumerate(self.ids)} if x.shape[1] else {}), n

    @property
    def exhausted(self) -> bool:
        return self.reader.finished

    def take(self, outputs: dict) -> None:
        if all(i in outputs for i in self.ids):
            codes = [torch.cat([outputs[i][lvl] for i in self.ids]) for lvl in range(self.model.n_codebooks)]
            self.sink.write(codes)

    def finish(self, engine) -> FileResult:
        self.take({i: engine.flush(i) for i in self.ids})
        header: SnacHeader = self.sink.finish(self.reader.samples)
        self.reader.close()
        return FileResult(
            self.job.name,
            self.job.output,
            seconds=self.reader.info.seconds,
            codes=header.frames * header.streams * header.info.codes_per_frame,
            notes=tuple(self.reader.conversions),
        )

    def abort(self) -> None:
        self.reader.close()
        self.sink.abort()


class ModelMismatchError(ValueError):
    """A code file made with another model: names the differing fields."""


def check_model(header: SnacHeader, model, name: str) -> None:
    """Refuse codes made with another model (naming every differing field)."""
    mine = model_info(model)
    diffs = [
        f"{key} {getattr(header.info, key)!r} (file) != {getattr(mine, key)!r} (model)"
        for key in ("sample_rate", "hop_length", "vq_strides", "codebook_size", "fingerprint")
        if getattr(header.info, key) != getattr(mine, key)
    ]
    if diffs:
        raise ModelMismatchError(
            f"{name} was encoded with a different model: {'; '.join(diffs)}; decode it with --model set to "
            "the model that encoded it"
        )


class DecodeTask:
    """One code file being decoded: its code blocks, stream ids, and the audio writer."""

    def __init__(
        self, index: int, job: Job, model, seed: int | None, frames_per_step: int, audio: str | None = None
    ):
        self.job, self.model, self.seed = job, model, seed
        self.source = CodeSource(job.source)
        try:
            h = self.source.header
            check_model(h, model, str(job.source))
            self.header = h
            self.ids = [(index, s) for s in range(h.streams)]
            self._blocks = self.source.blocks(frames_per_step)
            self._next = next(self._blocks, None)
            self.tmp = temporary_name(job.output)
            fmt, subtype = audio_format(f"x.{audio}" if audio else job.output)
            self.writer = WavWriter(self.tmp, model.sample_rate, h.streams, format=fmt, subtype=subtype)
        except RuntimeError as e:  # soundfile reports an unwritable path as a RuntimeError
            self.source.close()
            raise OSError(f"cannot write {job.output}: {e}") from None
        except BaseException:
            self.source.close()
            raise
        self.written = 0

    def open(self, engine) -> None:
        for i in self.ids:
            engine.open(i, self.seed)

    def inputs(self, block: int) -> tuple[dict, int]:
        codes, self._next = self._next, next(self._blocks, None)
        if codes is None:
            return {}, 0
        frames = codes[0].shape[-1]
        return {i: [c[s : s + 1] for c in codes] for s, i in enumerate(self.ids)}, frames

    @property
    def exhausted(self) -> bool:
        return self._next is None

    def take(self, outputs: dict) -> None:
        if all(i in outputs for i in self.ids):
            audio = torch.cat([outputs[i][0] for i in self.ids]).numpy()  # [streams, m]
            keep = max(0, min(audio.shape[1], self.header.samples - self.written))
            if keep:
                self.writer.write(audio[:, :keep].astype(np.float32))
                self.written += keep

    def finish(self, engine) -> FileResult:
        self.take({i: engine.flush(i) for i in self.ids})
        self.writer.close()
        self.source.close()
        os.replace(self.tmp, self.job.output)
        h = self.header
        return FileResult(
            self.job.name,
            self.job.output,
            seconds=h.length / h.sample_rate,
            codes=h.frames * h.streams * h.info.codes_per_frame,
        )

    def abort(self) -> None:
        self.source.close()
        if hasattr(self, "writer"):
            self.writer.close()
            self.tmp.unlink(missing_ok=True)


def block_samples(model, seconds: float = 1.0) -> int:
    """Samples per encoder step, about ``seconds``: whole ``pad_multiple`` (streams stay in phase)."""
    m = model.pad_multiple
    return m * max(1, round(seconds * model.sample_rate / m))
