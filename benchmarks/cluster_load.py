"""Load test of rooms across relay nodes: N ``serve --broker`` nodes sharing one redis-server.

    python -m benchmarks.cluster_load --nodes 3 --rooms 50 --seconds 30 [--listeners-per-room 3]
    python -m benchmarks.cluster_load --quick          # 3 nodes, 6 rooms, 3 s (what the test runs)

Everything runs on loopback: a private ``redis-server`` (no persistence) on a free port, the
nodes as subprocesses (``python -m snac_stream serve --broker redis://127.0.0.1:PORT/0``), and
one client process. Room i's publisher is on node ``i % nodes``; its listeners are on that node
and the next ones (``--listeners-per-room``, at most one per node), so every room has one
listener on the publisher's node and the others across nodes. Publishers send a 24 kHz code
stream (1 frame per packet at real time: 11.7 packets/s, HELLO ... END); listeners decode every
packet and count with ``ListenStats``. Reported:

- frames sent, delivered and lost (every listener: received + lost + missed at join == sent);
- relay latency (publisher ``send`` -> listener has the decoded packet; one clock) p50/p99/max,
  for listeners on the publisher's node and for listeners on other nodes (through Redis);
- Redis memory (``used_memory``, sampled) before, at peak and at the end, the longest room
  stream (XLEN; bounded by ``--broker-maxlen``), the nodes' RSS and CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.bench_common import cpu_model, loadavg, percentiles
from benchmarks.load import INFO_24K, _get_json, _RssSampler, _start_server, paced_packets
from snac_stream.net.client import RelayError, listen, publish
from snac_stream.protocol.packets import CodePacket, End

# ----------------------------------------------------------------------------- redis-server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (no persistence), started and stopped by us.

    ``kill()`` then ``start()`` restarts it empty on the same port (a crash and a restart).
    """

    def __init__(self, directory: str | Path, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.directory = Path(directory)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        self.proc = subprocess.Popen([self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout:g} s")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: Redis disappears mid-whatever, as in a crash."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- the run


@dataclass
class ClusterResult:
    nodes: int
    rooms: int
    listeners_per_room: int
    seconds: float
    broker_maxlen: int
    cpu: str = ""
    frames_sent: int = 0
    frames_expected: int = 0  #: sent x listeners per room
    frames_delivered: int = 0
    frames_lost: int = 0  #: expected - delivered
    frames_counted_lost: int = 0  #: what the listeners counted (gaps + missed at join)
    accounting_ok: int = 0  #: listeners whose accounting closes exactly
    listeners: int = 0
    latency_local_ms: dict = field(default_factory=dict)
    latency_cross_ms: dict = field(default_factory=dict)
    redis_memory_baseline_mib: float = 0.0
    redis_memory_peak_mib: float = 0.0
    redis_memory_end_mib: float = 0.0
    redis_stream_max_len: int = 0
    node_rss_peak_mib: list = field(default_factory=list)
    node_cpu_s: list = field(default_factory=list)
    client_cpu_s: float = 0.0  #: CPU time of this (the clients') process
    wall_s: float = 0.0
    loadavg: list | None = None
    broker_counters: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def report(self) -> str:
        def lat(d: dict) -> str:
            if not d.get("n"):
                return "no samples"
            return f"p50 {d['p50']:.2f} ms, p99 {d['p99']:.2f} ms, max {d['max']:.2f} ms ({d['n']} packets)"

        cpu = sum(self.node_cpu_s)
        rss = ", ".join(f"{r:.0f}" for r in self.node_rss_peak_mib)
        wall = max(self.wall_s, 1e-9)
        return "\n".join(
            [
                f"cluster load: {self.nodes} nodes, {self.rooms} rooms, {self.listeners_per_room} listeners "
                f"per room (1 on the publisher's node), {self.seconds:g} s at 1 frame/packet, real time",
                f"CPU: {self.cpu}; load average after the run {self.loadavg}",
                f"frames: sent {self.frames_sent}, to deliver {self.frames_expected}, delivered "
                f"{self.frames_delivered}, lost {self.frames_lost} "
                f"(counted by listeners {self.frames_counted_lost})",
                "accounting closes (received + lost + missed == sent) for "
                f"{self.accounting_ok}/{self.listeners} listeners",
                f"relay latency within a node: {lat(self.latency_local_ms)}",
                f"relay latency across nodes (via Redis): {lat(self.latency_cross_ms)}",
                f"Redis used_memory: {self.redis_memory_baseline_mib:.2f} MiB before, peak "
                f"{self.redis_memory_peak_mib:.2f} MiB, end {self.redis_memory_end_mib:.2f} MiB; "
                f"longest room stream {self.redis_stream_max_len} entries (MAXLEN ~ {self.broker_maxlen})",
                f"nodes: RSS peak {rss} MiB; CPU {cpu:.1f} s in {self.wall_s:.1f} s wall "
                f"({100 * cpu / wall:.0f} % of one core, all nodes together); clients' process "
                f"{self.client_cpu_s:.1f} s ({100 * self.client_cpu_s / wall:.0f} %)",
                f"errors: {self.errors or 'none'}",
            ]
        )


async def _redis_sampler(url: str, interval: float, out: list[int]) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        while True:
            out.append(int((await client.info("memory"))["used_memory"]))
            await asyncio.sleep(interval)
    finally:
        await client.aclose()


async def _redis_figures(url: str) -> tuple[int, int]:
    """(used_memory, longest stream) now."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        longest = 0
        async for key in client.scan_iter(match="snac:*:s", count=500):
            longest = max(longest, await client.xlen(key))
        return int((await client.info("memory"))["used_memory"]), longest
    finally:
        await client.aclose()


async def run_cluster_load(
    nodes: int = 3,
    rooms: int = 50,
    seconds: float = 30.0,
    *,
    listeners_per_room: int | None = None,
    broker_maxlen: int = 128,
    redis_url: str | None = None,
    seed: int = 0,
) -> ClusterResult:
    """Run the load test (see the module doc); starts its own redis-server unless given ``redis_url``."""
    per_room = nodes if listeners_per_room is None else listeners_per_room
    if not 1 <= per_room <= nodes:
        raise ValueError("listeners_per_room must be in 1..nodes")
    result = ClusterResult(nodes, rooms, per_room, seconds, broker_maxlen, cpu=cpu_model())
    with tempfile.TemporaryDirectory(prefix="snac-redis-") as tmp:
        if redis_url is None:
            with RedisServer(tmp) as redis_server:
                await _run(result, redis_server.url, seed)
        else:
            await _run(result, redis_url, seed)
    return result


async def _run(result: ClusterResult, url: str, seed: int) -> None:
    info = INFO_24K
    period = info.frame_size / info.sample_rate
    n_packets = max(1, int(result.seconds / period))
    extra = [
        "--broker",
        url,
        "--broker-maxlen",
        str(result.broker_maxlen),
        "--max-rooms",
        str(result.rooms + 4),
    ]
    started, cpu_started = time.perf_counter(), time.process_time()
    memory: list[int] = []
    result.redis_memory_baseline_mib = (await _redis_figures(url))[0] / 2**20
    procs = await asyncio.gather(
        *(_start_server(result.rooms * result.listeners_per_room, "skip", extra) for _ in range(result.nodes))
    )
    samplers = [_RssSampler(proc.pid, 0.1) for proc, _ in procs]
    for sampler in samplers:
        sampler.sample()
    cpu0 = [s.cpu for s in samplers]
    tasks = [asyncio.create_task(s.run()) for s in samplers]
    tasks.append(asyncio.create_task(_redis_sampler(url, 0.25, memory)))
    urls = [u for _, u in procs]
    sent_at: dict[tuple[int, int], float] = {}
    lat_local: list[float] = []
    lat_cross: list[float] = []
    rng = random.Random(seed)
    try:
        # room i: publisher on node i % nodes, listeners on that node and the next ones
        placement = [
            [(i + k) % result.nodes for k in range(result.listeners_per_room)] for i in range(result.rooms)
        ]
        streams = {
            (i, node): listen(f"{urls[node]}/rooms/c{i}?role=listen", max_size=1 << 20)
            for i in range(result.rooms)
            for node in placement[i]
        }
        result.listeners = len(streams)

        async def receive(i: int, node: int) -> End | None:
            sink = lat_local if node == i % result.nodes else lat_cross
            try:
                async for packet in streams[(i, node)]:
                    if isinstance(packet, CodePacket):
                        sink.append(time.perf_counter() - sent_at[(i, packet.seq)])
                    elif isinstance(packet, End):
                        return packet
            except RelayError as e:
                result.errors.append(f"listener {i}@{node}: {e}")
            return None

        receivers = {key: asyncio.create_task(receive(*key)) for key in streams}
        async with asyncio.timeout(60):  # every listener in, every room read by its node's broker
            while True:
                healths = await asyncio.gather(
                    *(asyncio.to_thread(_get_json, u.replace("ws://", "http://") + "/health") for u in urls)
                )
                rooms_ = [r for h in healths for r in (h["rooms"] or {}).values()]
                if sum(r["listeners"] for r in rooms_) == len(streams) and all(
                    (r.get("cluster") or {}).get("reading") for r in rooms_
                ):
                    break
                await asyncio.sleep(0.1)

        def packets(i: int):
            return paced_packets(info, i, n_packets, period, 1, seed, rng, sent_at)

        async def send(i: int) -> int:
            url_ = f"{urls[i % result.nodes]}/rooms/c{i}?role=publish"
            return (await publish(url_, packets(i), max_size=1 << 20)).frames

        sent = await asyncio.gather(*(send(i) for i in range(result.rooms)), return_exceptions=True)
        async with asyncio.timeout(30):
            ends = dict(zip(receivers, await asyncio.gather(*receivers.values()), strict=True))
        for (i, node), stream in streams.items():
            frames = sent[i]
            if isinstance(frames, BaseException):
                result.errors.append(f"publisher {i}: {frames!r}")
                continue
            s, end = stream.stats, ends[(i, node)]
            result.frames_expected += frames
            result.frames_delivered += s.frames_received
            result.frames_counted_lost += s.frames_lost + s.frames_missed_at_join
            counted = s.frames_received + s.frames_lost + s.frames_missed_at_join
            if end is not None and end.total_frames == frames and counted == frames:
                result.accounting_ok += 1
            await stream.aclose()
        result.frames_sent = sum(f for f in sent if isinstance(f, int))
        result.frames_lost = result.frames_expected - result.frames_delivered
        for u in urls:
            health = await asyncio.to_thread(_get_json, u.replace("ws://", "http://") + "/health")
            result.broker_counters.append(health["broker"]["counters"])
        used, longest = await _redis_figures(url)
        result.redis_memory_end_mib, result.redis_stream_max_len = used / 2**20, longest
    finally:
        result.wall_s = time.perf_counter() - started
        result.client_cpu_s = time.process_time() - cpu_started
        result.loadavg = loadavg()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.node_rss_peak_mib = [s.peak / 2**20 for s in samplers]
        result.node_cpu_s = [round(s.cpu - c, 2) for s, c in zip(samplers, cpu0, strict=True)]
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
    result.redis_memory_peak_mib = max(memory, default=0) / 2**20
    result.latency_local_ms = percentiles([x * 1000 for x in lat_local], (50, 99))
    result.latency_cross_ms = percentiles([x * 1000 for x in lat_cross], (50, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster_load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--listeners-per-room", type=int, default=None, help="1..nodes (default: nodes)")
    parser.add_argument("--broker-maxlen", type=int, default=128)
    parser.add_argument("--redis", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--quick", action="store_true", help="3 nodes, 6 rooms, 3 s")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.rooms, args.seconds = 3, 6, 3.0
    result = asyncio.run(
        run_cluster_load(
            args.nodes,
            args.rooms,
            args.seconds,
            listeners_per_room=args.listeners_per_room,
            broker_maxlen=args.broker_maxlen,
            redis_url=args.redis,
        )
    )
    print(result.report())
    if args.json:
        tmp = f"{args.json}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(asdict(result), f, indent=1)
        os.replace(tmp, args.json)
    ok = result.accounting_ok == result.listeners and not result.errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
