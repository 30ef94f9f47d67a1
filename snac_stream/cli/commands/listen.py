"""``snac-stream listen``: receive a code stream from a room, decode it with the streaming
decoder and write a WAV file or play it; exits after the stream's END. With the same model,
seed and the fast path, the file equals the offline ``forward`` of the sent audio."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .common import add_client_arguments, load_model, token_from, with_role

HELP = "receive codes from a room and decode them to a file or the speaker"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    sink = parser.add_mutually_exclusive_group(required=True)
    sink.add_argument("--output", metavar="FILE.wav", help="write the decoded audio (32-bit float WAV)")
    sink.add_argument("--speaker", action="store_true", help="play on the default output device")
    parser.add_argument("--seed", type=int, default=0, help="decoder noise seed (default 0)")
    parser.add_argument("--prefill-ms", type=float, default=120.0, help="speaker jitter buffer (ms)")


async def receive(args: argparse.Namespace) -> int:
    import concurrent.futures

    from snac_stream.audio.files import WavWriter
    from snac_stream.net.client import RelayError, listen
    from snac_stream.net.receiver import CodeReceiver
    from snac_stream.protocol.packets import End, ModelInfo, PacketError

    model = load_model(args.model)
    receiver = CodeReceiver(model, seed=args.seed)
    url = with_role(args.url, "listen")
    speaker = writer = None
    if args.speaker:
        from snac_stream.audio.devices import AudioUnavailableError, Speaker

        try:
            speaker = Speaker(model.sample_rate, prefill_ms=args.prefill_ms)
            speaker.start()
        except AudioUnavailableError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        writer = WavWriter(args.output, model.sample_rate)
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snac-decode")
    loop = asyncio.get_running_loop()
    stream = listen(url, token=token_from(args), expect_info=ModelInfo.from_model(model))
    print(f"listening on {url}", file=sys.stderr)
    try:
        async for packet in stream:
            audio = await loop.run_in_executor(executor, receiver.on_packet, packet)
            if audio.size:
                if writer is not None:
                    writer.write(audio)
                else:
                    await asyncio.to_thread(speaker.write, audio, True, 5.0)
            if isinstance(packet, End):
                break
    except (RelayError, PacketError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot connect to {url}: {e}", file=sys.stderr)
        return 1
    finally:
        await stream.aclose()
        executor.shutdown(wait=True)
        if writer is not None:
            writer.close()
        if speaker is not None:
            await asyncio.to_thread(speaker.drain, 30.0)
            speaker.close()
    s = stream.stats
    where = args.output if writer is not None else "the speaker"
    print(
        f"received {s.frames_received} coarse frames ({s.frames_lost} lost, {s.frames_missed_at_join} "
        f"missed before joining); wrote {receiver.stats.samples_out} "
        f"samples to {where}",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(receive(args))
    except KeyboardInterrupt:
        return 130
