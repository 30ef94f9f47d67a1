"""``snac-stream send``: encode a file (in real time, or --fast) or the microphone, and
publish the code packets to a room of a relay server."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .common import add_client_arguments, load_model, token_from, with_role

HELP = "encode a file or the microphone and publish the codes to a room"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", metavar="FILE", help="audio file (any rate/channels; resampled, mixed down)"
    )
    source.add_argument("--mic", action="store_true", help="the default microphone")
    parser.add_argument(
        "--fast", action="store_true", help="send the file as fast as possible, not in real time"
    )
    parser.add_argument("--seconds", type=float, default=None, help="stop after this much audio")
    parser.add_argument(
        "--frames-per-packet", type=int, default=1, help="coarse frames per packet (default 1)"
    )


async def send(args: argparse.Namespace) -> int:
    from snac_stream.audio.files import read_audio
    from snac_stream.net.client import RelayError, publish
    from snac_stream.net.sender import Packetizer, encode_stream, file_chunks, microphone_chunks

    model = load_model(args.model)
    packetizer = Packetizer(model, frames_per_packet=args.frames_per_packet)
    url = with_role(args.url, "publish")
    mic = None
    if args.mic:
        from snac_stream.audio.devices import AudioUnavailableError, Microphone

        try:
            mic = Microphone(model.sample_rate)
            mic.start()
        except AudioUnavailableError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        chunks = microphone_chunks(mic, args.seconds)
        print(f"sending the microphone to {url} (Ctrl-C to stop)", file=sys.stderr)
    else:
        audio = read_audio(args.input, model.sample_rate)
        if args.seconds is not None:
            audio = audio[: int(args.seconds * model.sample_rate)]
        chunks = file_chunks(audio, model.sample_rate, realtime=not args.fast)
        print(f"sending {args.input} ({len(audio) / model.sample_rate:.2f} s) to {url}", file=sys.stderr)
    try:
        stats = await publish(url, encode_stream(packetizer, chunks), token=token_from(args))
    except RelayError as e:
        print(f"error: the server closed the connection: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot connect to {url}: {e}", file=sys.stderr)
        return 1
    finally:
        if mic is not None:
            mic.close()
    seconds = packetizer.stats.samples / model.sample_rate
    print(
        f"sent {packetizer.stats.frames} coarse frames ({seconds:.2f} s) in {stats.packets} packets, "
        f"{stats.bytes} bytes ({8 * stats.bytes / max(seconds, 1e-9):.0f} bit/s of packets)",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(send(args))
    except KeyboardInterrupt:
        return 130
