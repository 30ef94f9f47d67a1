"""Load test of the relay: N publisher/listener pairs on loopback, one room per pair.

    python -m benchmarks.load --pairs 50 --seconds 30 [--frames-per-packet 1] [--rate 1.0]

The server runs in a subprocess (``python -m snac_stream serve``) so that its memory is
measured alone (psutil, sampled every 50 ms). Each publisher sends a 24 kHz code stream
(HELLO, CODES of ``--frames-per-packet`` coarse frames paced at ``--rate`` x real time,
END); its listener decodes every packet and counts with ``ListenStats``. Reported:

- frames sent / delivered / lost, and whether every pair's accounting closes
  (``received + lost + missed_at_join == END.total_frames == frames sent``);
- relay latency: publisher ``send`` -> listener has the decoded packet (same clock,
  same process; includes both clients' event-loop time), p50 / p99 / max;
- the server's baseline (before clients connect) and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import struct
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field

import numpy as np
import psutil
import torch

from snac_stream.net.client import RelayError, listen, publish
from snac_stream.protocol.packets import CodePacket, End, EndReason, Hello, ModelInfo, encode_packet

INFO_24K = ModelInfo(24000, 512, (4, 2, 1), 4096, b"loadtest")


@dataclass
class LoadResult:
    pairs: int
    seconds: float
    frames_per_packet: int
    rate: float
    frames_sent: int = 0
    frames_delivered: int = 0
    frames_lost: int = 0  #: counted lost by listeners (gaps, missed at join, dropped listeners)
    packets_sent: int = 0
    accounting_ok: int = 0  #: pairs whose accounting closes exactly
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    latency_samples: int = 0
    rss_baseline_mib: float = 0.0
    rss_peak_mib: float = 0.0
    server_cpu_s: float = 0.0  #: user + system CPU time of the server process
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    server_counters: dict = field(default_factory=dict)

    def report(self) -> str:
        packets_per_s = INFO_24K.frame_rate / self.frames_per_packet * self.rate
        return "\n".join(
            [
                f"load: {self.pairs} publisher/listener pairs x {self.seconds:g} s, {self.frames_per_packet} "
                f"frame(s)/packet at {self.rate:g}x real time ({packets_per_s:.1f} packets/s per pair, "
                f"{packets_per_s * self.pairs:.0f} in + out per second)",
                f"frames: sent {self.frames_sent}, delivered {self.frames_delivered}, "
                f"lost {self.frames_lost} "
                f"(relay skipped {self.server_counters.get('frames_skipped', 0)}, dropped listeners "
                f"{self.server_counters.get('listeners_dropped', 0)})",
                "accounting closes (received + lost + missed == sent) for "
                f"{self.accounting_ok}/{self.pairs} pairs",
                f"relay latency (publisher send -> listener decoded), {self.latency_samples} packets: "
                f"p50 {self.latency_p50_ms:.2f} ms, p99 {self.latency_p99_ms:.2f} ms, "
                f"max {self.latency_max_ms:.2f} ms",
                f"server RSS: baseline {self.rss_baseline_mib:.1f} MiB, peak {self.rss_peak_mib:.1f} MiB; "
                f"server CPU {self.server_cpu_s:.1f} s in {self.wall_s:.1f} s wall "
                f"({100 * self.server_cpu_s / max(self.wall_s, 1e-9):.0f} % of one core)",
                f"errors: {self.errors or 'none'}",
            ]
        )


async def paced_packets(
    info: ModelInfo,
    stream_id: int,
    n_packets: int,
    period: float,
    frames_per_packet: int,
    seed: int,
    rng: random.Random,
    sent_at: dict,
):
    """A publisher's stream in real time: HELLO, ``n_packets`` CODES of ``frames_per_packet``
    frames every ``period`` seconds (random codes, first one at a random phase), END.
    ``sent_at[(stream_id, seq)]`` records when each CODES packet left."""
    g = torch.Generator().manual_seed(seed * 100_000 + stream_id)
    codes = [torch.randint(0, 4096, (frames_per_packet * r,), generator=g) for r in info.codes_per_level]
    data = bytearray(encode_packet(CodePacket(stream_id, 0, 0, codes), info))
    yield encode_packet(Hello(info, stream_id))
    t0 = time.perf_counter() + rng.uniform(0, period)
    for k in range(n_packets):
        delay = t0 + k * period - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        struct.pack_into("<II", data, 6, k, k * frames_per_packet)
        sent_at[(stream_id, k)] = time.perf_counter()
        yield bytes(data)
    frames = n_packets * frames_per_packet
    yield encode_packet(End(stream_id, n_packets, frames, frames * info.frame_size, EndReason.COMPLETE))


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class _RssSampler:
    def __init__(self, pid: int, interval: float) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.cpu = 0.0

    def sample(self) -> int:
        with self.proc.oneshot():
            rss = self.proc.memory_info().rss
            t = self.proc.cpu_times()
        self.peak = max(self.peak, rss)
        self.cpu = t.user + t.system
        return rss

    async def run(self) -> None:
        while True:
            try:
                self.sample()
            except psutil.Error:
                return
            await asyncio.sleep(self.interval)


async def _start_server(
    pairs: int, slow_listener: str, extra: list[str]
) -> tuple[asyncio.subprocess.Process, str]:
    cmd = [
        sys.executable,
        "-m",
        "snac_stream",
        "serve",
        "--port",
        "0",
        "--log-level",
        "WARNING",
        "--max-connections",
        str(max(256, 2 * pairs + 16)),
        "--max-rooms",
        str(max(64, pairs + 4)),
        "--slow-listener",
        slow_listener,
        *extra,
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        line = (await proc.stdout.readline()).decode()
    match = re.search(r"ws://\S+", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, match.group(0)


async def run_load(
    pairs: int = 50,
    seconds: float = 30.0,
    *,
    frames_per_packet: int = 1,
    rate: float = 1.0,
    slow_listener: str = "skip",
    server_args: list[str] | None = None,
    rss_interval: float = 0.05,
    seed: int = 0,
) -> LoadResult:
    """Run the load test; see the module doc."""
    result = LoadResult(pairs, seconds, frames_per_packet, rate)
    info = INFO_24K
    period = info.frame_size * frames_per_packet / info.sample_rate / rate
    n_packets = max(1, int(seconds / period))
    proc, url = await _start_server(pairs, slow_listener, server_args or [])
    http = url.replace("ws://", "http://")
    sampler = _RssSampler(proc.pid, rss_interval)
    await asyncio.sleep(0.2)
    result.rss_baseline_mib = sampler.sample() / 2**20
    cpu0 = sampler.cpu
    sampler_task = asyncio.create_task(sampler.run())
    sent_at: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    rng = random.Random(seed)
    started = time.perf_counter()
    try:
        streams = [listen(f"{url}/rooms/load{i}?role=listen", max_size=1 << 20) for i in range(pairs)]

        async def receive(i: int) -> End | None:
            try:
                async for packet in streams[i]:
                    if isinstance(packet, CodePacket):
                        latencies.append(time.perf_counter() - sent_at.pop((i, packet.seq)))
                    elif isinstance(packet, End):
                        return packet
            except RelayError as e:
                result.errors.append(f"listener {i}: {e}")
            return None

        receivers = [asyncio.create_task(receive(i)) for i in range(pairs)]
        async with asyncio.timeout(60):  # every listener is in its room before anyone publishes
            while True:
                rooms = (await asyncio.to_thread(_get_json, f"{http}/health"))["rooms"] or {}
                if sum(r["listeners"] for r in rooms.values()) == pairs:
                    break
                await asyncio.sleep(0.1)

        def packets(i: int):
            return paced_packets(info, i, n_packets, period, frames_per_packet, seed, rng, sent_at)

        async def send(i: int) -> int:
            stats = await publish(f"{url}/rooms/load{i}?role=publish", packets(i), max_size=1 << 20)
            return stats.frames

        sent = await asyncio.gather(*(send(i) for i in range(pairs)), return_exceptions=True)
        async with asyncio.timeout(30):
            ends = await asyncio.gather(*receivers)
        for i, (frames, end, stream) in enumerate(zip(sent, ends, streams, strict=True)):
            if isinstance(frames, BaseException):
                result.errors.append(f"publisher {i}: {frames!r}")
                continue
            s = stream.stats
            result.frames_sent += frames
            result.packets_sent += n_packets
            result.frames_delivered += s.frames_received
            lost = frames - s.frames_received  # a dropped listener loses the rest
            result.frames_lost += lost
            counted = s.frames_lost + s.frames_missed_at_join
            if end is not None and end.total_frames == frames and s.frames_received + counted == frames:
                result.accounting_ok += 1
            await stream.aclose()
        result.server_counters = (await asyncio.to_thread(_get_json, f"{http}/health"))["counters"]
    finally:
        result.wall_s = time.perf_counter() - started
        sampler_task.cancel()
        try:
            sampler.sample()
        except psutil.Error:
            pass
        result.rss_peak_mib = sampler.peak / 2**20
        result.server_cpu_s = sampler.cpu - cpu0
        proc.terminate()
        try:
            async with asyncio.timeout(20):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    if latencies:
        ms = np.array(latencies) * 1000
        result.latency_p50_ms = float(np.percentile(ms, 50))
        result.latency_p99_ms = float(np.percentile(ms, 99))
        result.latency_max_ms = float(ms.max())
        result.latency_samples = int(ms.size)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=50, help="publisher/listener pairs (default 50)")
    parser.add_argument("--seconds", type=float, default=30.0, help="stream duration (default 30)")
    parser.add_argument("--frames-per-packet", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1.0, help="x real time (default 1)")
    parser.add_argument("--slow-listener", choices=("drop", "skip"), default="skip")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args(argv)
    result = asyncio.run(
        run_load(
            args.pairs,
            args.seconds,
            frames_per_packet=args.frames_per_packet,
            rate=args.rate,
            slow_listener=args.slow_listener,
        )
    )
    print(result.report())
    if args.json:
        print(json.dumps(asdict(result), indent=1))
    ok = result.accounting_ok == result.pairs and not result.errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
