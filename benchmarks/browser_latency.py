"""The browser path's latency, measured: what the page's jitter buffer and audio output add,
and end to end from the sender's encoder input to the page's ear, next to the CLI path.

One process runs the server (relay, model endpoints, browser routes; 127.0.0.1, port 0), a
publisher that feeds a signal in real time (10 ms chunks, ``Packetizer`` on a worker thread,
one coarse frame per packet, as ``snac-stream send``), and a Python listener of the same room
decoding like ``snac-stream listen`` (``CodeReceiver`` on a worker thread: the CLI path).
Headless Chromium opens ``/?room=R&listen=1&prebuffer=P`` (the browser path: the server
decodes the room once and sends int16 PCM; the page plays it through its AudioWorklet).

For sample n, with c(n) the wall-clock time its 10 ms chunk went to the encoder::

    cli      = decoded by the Python listener - c(n)       (CLI path, end to end)
    arrival  = PCM holding n reached the page - c(n)       (browser path, before the page)
    heard    = n leaves the page's audio output - c(n)     (AudioContext.getOutputTimestamp)
    page     = heard - arrival                             (jitter buffer + audio output)
    added    = heard - cli                                 (what the browser path adds)

All clocks are this machine's wall clock (Python ``time.time()``, the page's
``performance.timeOrigin + performance.now()``). Samples of the final flush are left out
(they wait for the END, not for the network). ``--prebuffer 50,100,200`` runs one stream per
setting. ``--model small`` is the tests' 16 kHz model (cheap: the path's own latency shows
with less compute); ``--quick`` uses it for 2 s (for tests); ``--screenshot PATH``
saves the page mid-stream. Needs Chromium (``/usr/bin/chromium``) and Playwright.

    python -m benchmarks.browser_latency [--model random:24khz] [--seconds 8] [--prebuffer 50,100,200]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import concurrent.futures
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .bench_common import cpu_model, loadavg, make_signal, percentiles

#: The small model of --quick and of the browser tests: 16 kHz, 32 ms coarse frames.
SMALL_CONFIG = dict(
    sampling_rate=16000,
    encoder_dim=8,
    encoder_rates=[2, 4, 4, 4],
    decoder_dim=64,
    decoder_rates=[4, 4, 4, 2],
    attn_window_size=None,
    codebook_size=512,
    codebook_dim=4,
    vq_strides=[4, 2, 1],
    noise=True,
    depthwise=True,
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  #: Debian's chromium
#: Headless Chromium on these machines (DESIGN.md section 9).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def load(spec: str | None, quick: bool):
    if quick or spec == "small":
        from snac_model import SNAC

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            return SNAC(**SMALL_CONFIG).fold_weight_norm().eval()
    from snac_stream.cli.commands.common import load_model

    return load_model(spec or "random:24khz")


class Capture:
    """c(n): when each chunk of the signal went to the encoder (end sample, wall time)."""

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.times: list[float] = []

    def __call__(self, end: int, _perf: float) -> None:
        self.ends.append(end)
        self.times.append(time.time())

    def at(self, n: int) -> float:
        return self.times[bisect.bisect_right(self.ends, n)]


async def cli_listener(url: str, model, out: list[tuple[int, int, float]]) -> None:
    """The CLI path: decode the room as ``snac-stream listen`` does; (start, n, wall time)."""
    from snac_stream.net.client import listen
    from snac_stream.net.receiver import CodeReceiver
    from snac_stream.protocol.packets import End

    receiver = CodeReceiver(model, seed=0)
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-cli-decode")
    loop = asyncio.get_running_loop()
    pos = 0
    try:
        async for packet in listen(url):
            audio = await loop.run_in_executor(executor, receiver.on_packet, packet)
            if audio.size:
                out.append((pos, audio.size, time.time(), isinstance(packet, End)))
                pos += audio.size
            if isinstance(packet, End):
                return
    finally:
        executor.shutdown(wait=False)


async def one_stream(
    server, browser, model, signal: np.ndarray, prebuffer: float, room: str, shot: str | None
):
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    from snac_stream.net.client import publish
    from snac_stream.net.sender import Packetizer, encode_stream, file_chunks

    page = await browser.new_page()
    port = server.port
    await page.goto(f"http://127.0.0.1:{port}/?room={room}&listen=1&wait=1&prebuffer={prebuffer:g}")
    await page.wait_for_function("window.snacStats.connected", timeout=60000)
    cli: list = []
    cli_task = asyncio.create_task(cli_listener(f"{server.url}/rooms/{room}?role=listen", model, cli))
    while not server.relay.rooms[room].listeners or len(server.relay.rooms[room].listeners) < 2:
        await asyncio.sleep(0.01)
    capture = Capture()
    packetizer = Packetizer(model, frames_per_packet=1)
    chunks = file_chunks(signal, model.sample_rate, chunk_ms=10.0, realtime=True, on_chunk=capture)
    shot_task = None
    if shot:

        async def screenshot() -> None:  # mid-stream, with audio in the jitter buffer
            await asyncio.sleep(0.5 * len(signal) / model.sample_rate)
            with contextlib.suppress(PlaywrightTimeout):
                await page.wait_for_function("window.snacStats.buffer_ms > 20", timeout=3000)
            await page.screenshot(path=shot)

        shot_task = asyncio.create_task(screenshot())
    await publish(f"{server.url}/rooms/{room}?role=publish", encode_stream(packetizer, chunks))
    await asyncio.wait_for(cli_task, 60)
    await page.wait_for_function("window.snacStats.drained", timeout=60000)
    if shot_task is not None:
        await shot_task
    timeline = await page.evaluate("window.snacTimeline")
    stats = await page.evaluate("window.snacStats")
    offset_ms = await page.evaluate("performance.timeOrigin + performance.now()") - 1000 * time.time()
    await page.close()
    return measure(model, capture, cli, timeline, stats, prebuffer, len(signal), offset_ms)


def measure(model, capture: Capture, cli, timeline, stats, prebuffer, n_total, offset_ms) -> dict:
    sr = model.sample_rate
    last = n_total - sr // 10  # leave out the flushed tail (and anything past the signal)
    cli_ms = [1000 * (t - capture.at(s)) for s, n, t, flushed in cli if not flushed and s < last]
    arrivals = timeline["arrivals"]  # [gpos, n, position, arrival ms, server ms]
    arrive_ms = [a[3] / 1000 - capture.at(a[2]) for a in arrivals if a[2] < last]
    gstarts = [a[0] for a in arrivals]
    heard, page = [], []
    for gpos, t_heard in timeline["plays"]:
        k = bisect.bisect_right(gstarts, gpos) - 1
        if k < 0:
            continue
        g0, _, pos0, t_arrive, _ = arrivals[k]
        pos = pos0 + gpos - g0
        if pos >= last:
            continue
        heard.append(t_heard / 1000 - capture.at(pos))
        page.append((t_heard - t_arrive) / 1000)
    cli_p50 = percentiles(cli_ms)["p50"]
    heard_ms = [1000 * x for x in heard]
    return {
        "prebuffer_ms": prebuffer,
        "cli_e2e_ms": percentiles(cli_ms),
        "page_arrival_e2e_ms": percentiles([1000 * x for x in arrive_ms]),
        "page_heard_e2e_ms": percentiles(heard_ms),
        "page_buffer_and_output_ms": percentiles([1000 * x for x in page]),
        "browser_added_ms_p50": None
        if cli_p50 is None or not heard_ms
        else percentiles(heard_ms)["p50"] - cli_p50,
        "page": {
            k: stats[k]
            for k in ("samples_received", "samples_played", "samples_skipped", "frames_lost", "underruns")
        },
        "page_output_latency_ms": stats["latency"].get("output_ms"),
        "page_rtt_ms": stats["latency"].get("rtt_ms"),
        "page_clock_offset_ms": offset_ms,
    }


async def run(args) -> dict:
    from playwright.async_api import async_playwright

    from snac_stream.engine.latency import decoder_latency, encoder_latency
    from snac_stream.net.browser import add_browser
    from snac_stream.net.endpoints import add_model_endpoints
    from snac_stream.net.server import Server, ServerConfig

    model = load(args.model, args.quick)
    seconds = 2.0 if args.quick else args.seconds
    signal = make_signal(model.sample_rate, seconds)
    server = Server(ServerConfig(port=0))
    add_browser(server, add_model_endpoints(server, model, seed=0))
    await server.start()
    results = []
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                # warm-up (first calls build kernels and engines): one short stream, not measured
                await one_stream(server, browser, model, signal[: model.sample_rate], 100.0, "warmup", None)
                for k, prebuffer in enumerate(args.prebuffer):
                    shot = args.screenshot if k == 0 else None
                    results.append(
                        await one_stream(server, browser, model, signal, prebuffer, f"bench{k}", shot)
                    )
            finally:
                await browser.close()
    finally:
        await server.stop()
    return {
        "benchmark": "browser_latency",
        "command": "python -m benchmarks.browser_latency " + " ".join(sys.argv[1:]),
        "model": {
            "spec": "small (16 kHz test config)" if args.quick or args.model == "small" else args.model,
            "sample_rate": model.sample_rate,
            "frame_ms": 1000 * model.frame_size / model.sample_rate,
            "encoder_algorithmic_ms": encoder_latency(model).ms,
            "decoder_algorithmic_ms": decoder_latency(model).ms,
        },
        "seconds": seconds,
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg": loadavg(),
        },
        "runs": results,
    }


def report(result: dict) -> str:
    m = result["model"]
    lines = [
        f"browser path latency, {m['spec']} ({m['sample_rate']} Hz, frame {m['frame_ms']:.1f} ms; algorithmic"
        f" encoder {m['encoder_algorithmic_ms']:.0f} + decoder {m['decoder_algorithmic_ms']:.0f} ms), "
        f"{result['seconds']:g} s per stream, CPU {result['machine']['cpu']}",
        f"{'pre-buffer':>10} | {'CLI e2e p50/p95':>16} | {'page arrival':>14} | {'page heard':>14} | "
        f"{'buffer+output':>14} | {'added':>6} | lost underruns skipped",
    ]
    for r in result["runs"]:

        def pp(d):
            return "-" if d["p50"] is None else f"{d['p50']:.0f}/{d['p95']:.0f}"

        added = "-" if r["browser_added_ms_p50"] is None else f"{r['browser_added_ms_p50']:.0f}"
        g = r["page"]
        lines.append(
            f"{r['prebuffer_ms']:>8g} ms | {pp(r['cli_e2e_ms']):>16} | {pp(r['page_arrival_e2e_ms']):>14} | "
            f"{pp(r['page_heard_e2e_ms']):>14} | {pp(r['page_buffer_and_output_ms']):>14} | "
            f"{added:>6} | {g['frames_lost']} {g['underruns']} {g['samples_skipped']}"
        )
    lines.append("(ms, p50/p95 over samples; 'added' = page heard p50 - CLI p50)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.browser_latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--model",
        default="random:24khz",
        help="model spec, or 'small': the tests' 16 kHz config (default random:24khz)",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per stream (default 8)")
    parser.add_argument(
        "--prebuffer",
        default="50,100,200",
        help="page pre-buffer settings in ms, one stream each (default 50,100,200)",
    )
    parser.add_argument("--quick", action="store_true", help="small 16 kHz model, 2 s, one setting (100 ms)")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--screenshot", default=None, help="save the page during the first stream (PNG)")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    args.prebuffer = [100.0] if args.quick else [float(x) for x in args.prebuffer.split(",")]
    if not os.path.exists(args.chromium):
        print(f"error: no Chromium at {args.chromium} (apt-get install chromium)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    result = asyncio.run(run(args))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
