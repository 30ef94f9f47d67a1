"""The main job, end to end on one machine: relay server on loopback, a sender (microphone
or the embedded sample) streaming codes in real time, a listener decoding them to the
speaker or a WAV file, and the measured numbers.

::

    source --10 ms chunks--> StreamingEncoder --CODES--> ws://127.0.0.1:PORT/rooms/demo
                                                                   |
    speaker / WAV <-- StreamingDecoder <--CODES--------------------+

End-to-end latency is measured with timestamps on one clock: when a sample was handed to
the encoder, and when the decoder released it (before the speaker's jitter buffer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from snac_model import SNAC
from snac_stream.audio.files import WavWriter, demo_signal, read_audio
from snac_stream.engine.latency import decoder_latency, encoder_latency, end_to_end_latency
from snac_stream.net.client import listen, publish
from snac_stream.net.sender import Packetizer, encode_stream, file_chunks, microphone_chunks
from snac_stream.net.server import Server, ServerConfig
from snac_stream.protocol.packets import CodePacket, End, ws_frame_overhead

from .latency_meter import EndToEndMeter


@dataclass
class DemoOptions:
    seconds: float = 6.0
    input: str | None = None  # a file instead of the microphone / embedded sample
    use_mic: bool | None = None  # None: the microphone if there is one
    use_speaker: bool | None = None  # None: the speaker if there is one
    output: str | None = "snac_demo.wav"
    frames_per_packet: int = 1
    seed: int = 0
    room: str = "demo"


@dataclass
class DemoResult:
    source: str
    sink: str
    samples_in: int = 0
    samples_out: int = 0
    e2e_ms: dict = field(default_factory=dict)
    encode_step_ms: dict = field(default_factory=dict)
    decode_step_ms: dict = field(default_factory=dict)
    algorithmic_ms: dict = field(default_factory=dict)
    wire: dict = field(default_factory=dict)
    frames_lost: int = 0
    max_abs_vs_offline: float | None = None
    speaker: dict | None = None


def _quantiles_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    ms = 1000 * np.asarray(seconds)
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "count": len(ms)}


def _open_speaker(model: SNAC, want: bool | None):
    from snac_stream.audio.devices import AudioUnavailableError, Speaker, default_output_available

    if want is False or (want is None and not default_output_available()):
        return None
    try:
        speaker = Speaker(model.sample_rate, prefill_ms=120.0)
        speaker.start()
        return speaker
    except AudioUnavailableError:
        if want:
            raise
        return None


def _open_microphone(model: SNAC, want: bool | None):
    from snac_stream.audio.devices import AudioUnavailableError, Microphone, default_input_available

    if want is False or (want is None and not default_input_available()):
        return None
    try:
        mic = Microphone(model.sample_rate)
        mic.start()
        return mic
    except AudioUnavailableError:
        if want:
            raise
        return None


async def run_demo(model: SNAC, options: DemoOptions) -> DemoResult:
    from snac_stream.net.receiver import CodeReceiver

    sr = model.sample_rate
    meter = EndToEndMeter(sr)
    mic = None if options.input else _open_microphone(model, options.use_mic)
    if options.input:
        audio = read_audio(options.input, sr)[: int(options.seconds * sr)]
        source, chunks = f"file {options.input}", file_chunks(audio, sr, on_chunk=meter.entered)
    elif mic is not None:
        audio = None
        source, chunks = "microphone", microphone_chunks(mic, options.seconds, on_chunk=meter.entered)
    else:
        audio = demo_signal(sr, options.seconds)
        source, chunks = "embedded sample", file_chunks(audio, sr, on_chunk=meter.entered)
    speaker = _open_speaker(model, options.use_speaker)
    writer = WavWriter(options.output, sr) if options.output else None
    sinks = [s for s in ("speaker" if speaker else None, str(options.output) if writer else None) if s]
    result = DemoResult(source=source, sink=" + ".join(sinks) or "nowhere")
    result.algorithmic_ms = {
        "encoder": encoder_latency(model).ms,
        "decoder": decoder_latency(model).ms,
        "end_to_end": end_to_end_latency(model).ms,
    }
    decoded: list[np.ndarray] = []
    decode_seconds: list[float] = []
    wire_bytes = 0
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snac-decode")
    loop = asyncio.get_running_loop()
    packetizer = Packetizer(model, frames_per_packet=options.frames_per_packet)
    receiver = CodeReceiver(model, seed=options.seed)

    def decode(packet) -> np.ndarray:
        t = time.perf_counter()
        out = receiver.on_packet(packet)
        if isinstance(packet, CodePacket):
            decode_seconds.append(time.perf_counter() - t)
        return out

    async with Server(ServerConfig(port=0)) as server:
        url = f"{server.url}/rooms/{options.room}"

        async def listener() -> None:
            nonlocal wire_bytes
            stream = listen(url + "?role=listen")
            async for packet in stream:
                out = await loop.run_in_executor(executor, decode, packet)
                now = time.perf_counter()
                if out.size:
                    start = result.samples_out
                    result.samples_out += out.size
                    meter.left(start, result.samples_out, now)
                    decoded.append(out)
                    if writer:
                        writer.write(out)
                    if speaker:
                        speaker.write(out)
                if isinstance(packet, End):
                    result.frames_lost = stream.stats.frames_lost
                    await stream.aclose()
                    return

        task = asyncio.create_task(listener())
        while not (room := server.relay.rooms.get(options.room)) or not room.listeners:
            if task.done():
                await task  # raises what went wrong
            await asyncio.sleep(0.01)
        try:
            stats = await publish(url + "?role=publish", encode_stream(packetizer, chunks))
            await asyncio.wait_for(task, timeout=30)
        finally:
            task.cancel()
            executor.shutdown(wait=False)
            if mic is not None:
                mic.close()
            if writer:
                writer.close()
    if speaker is not None:
        await asyncio.to_thread(speaker.drain, 10.0)
        st = speaker.stats
        result.speaker = {"underflow_samples": st.underflow_samples, "overflow_samples": st.overflow_samples}
        speaker.close()
    result.samples_in = packetizer.stats.samples
    result.e2e_ms = meter.quantiles_ms()
    result.encode_step_ms = _quantiles_ms(packetizer.stats.step_seconds)
    result.decode_step_ms = _quantiles_ms(decode_seconds)
    seconds = result.samples_in / sr
    mean_packet = stats.bytes // max(stats.packets, 1)
    framed = stats.bytes + stats.packets * ws_frame_overhead(mean_packet, masked=True)
    result.wire = {
        "nominal_bps": model.bitrate,
        "packet_bps": 8 * stats.bytes / seconds if seconds else 0.0,
        "wire_bps": 8 * framed / seconds if seconds else 0.0,
        "packets": stats.packets,
        "frames_per_packet": options.frames_per_packet,
    }
    if audio is not None and decoded:
        with torch.inference_mode():
            offline, _ = model(torch.from_numpy(audio).view(1, 1, -1), seed=options.seed)
        out = np.concatenate(decoded)
        if out.shape[-1] == offline.shape[-1]:
            result.max_abs_vs_offline = float(np.abs(out - offline.view(-1).numpy()).max())
    return result


def format_report(model_spec: str, model: SNAC, result: DemoResult) -> str:
    a, e, w = result.algorithmic_ms, result.e2e_ms, result.wire
    enc, dec = result.encode_step_ms, result.decode_step_ms
    hop_ms = w["frames_per_packet"] * model.frame_size / model.sample_rate * 1000
    lines = [
        f"model          {model_spec}: {model.sample_rate} Hz, levels at "
        + " / ".join(f"{r:.1f}" for r in model.frame_rates)
        + f" Hz, {model.bitrate / 1000:.2f} kbps",
        f"source         {result.source} ({result.samples_in / model.sample_rate:.2f} s)",
        f"output         {result.sink} ({result.samples_out} samples)",
        f"algorithmic    encoder {a['encoder']:.0f} ms + decoder {a['decoder']:.0f} ms "
        f"-> end to end {a['end_to_end']:.0f} ms (analytic, worst case over frame phase)",
        f"end to end     p50 {e.get('p50', float('nan')):.0f} ms, p95 {e.get('p95', float('nan')):.0f} ms "
        "(measured: sample into the encoder -> same sample out of the decoder)",
        f"compute/hop    encode p50 {enc.get('p50', 0):.1f} ms / p99 {enc.get('p99', 0):.1f} ms per 10 ms "
        f"chunk; decode p50 {dec.get('p50', 0):.1f} ms / p99 {dec.get('p99', 0):.1f} ms per packet "
        f"({hop_ms:.1f} ms of audio)",
        f"wire           nominal {w['nominal_bps']:.0f} bit/s; packets {w['packet_bps']:.0f} bit/s; "
        f"with WebSocket framing {w['wire_bps']:.0f} bit/s ({w['packets']} packets)",
        f"lost frames    {result.frames_lost}",
    ]
    if result.max_abs_vs_offline is not None:
        lines.append(f"exactness      max |streamed - offline forward| = {result.max_abs_vs_offline:.2e}")
    if result.speaker:
        lines.append(f"speaker        underflow {result.speaker['underflow_samples']} samples")
    return "\n".join(lines)
