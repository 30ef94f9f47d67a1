"""The ``.snac`` container: round trips (encodec ``binary.py`` style: in-memory files, random codes,
random block splits) and every way a file can be bad."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snac_stream.protocol.container import (
    CONTAINER_VERSION,
    MAGIC,
    ContainerError,
    CorruptContainer,
    SnacHeader,
    SnacReader,
    SnacWriter,
    UnsupportedContainerVersion,
    frames_to_levels,
    levels_to_frames,
)
from snac_stream.protocol.packets import ModelInfo, pack_codes

FP = bytes(range(8))
INFO_24K = ModelInfo(24000, 512, (4, 2, 1), 4096, FP)
INFO_ODD = ModelInfo(16000, 15, (2, 1), 50, bytes(8))  # 6-bit codes, not a power of two
INFO_DEEP = ModelInfo(12000, 12, (4, 4, 2, 1, 1), 128, b"\xff" * 8)

infos = st.sampled_from([INFO_24K, INFO_ODD, INFO_DEEP])


def random_codes(info: ModelInfo, streams: int, frames: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, info.codebook_size, (streams, frames * r), generator=gen)
        for r in info.codes_per_level
    ]


def write(info, codes, *, streams, blocks=None, samples=None, **meta) -> bytes:
    f = io.BytesIO()
    frames = codes[0].shape[-1]
    meta = {"sample_rate": 44100, "channels": streams, "length": 1000, **meta}
    writer = SnacWriter(f, info, streams=streams, **meta)
    cuts = [0, *(blocks or []), frames]
    per = info.codes_per_level
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        writer.write([c[:, a * r : b * r] for c, r in zip(codes, per, strict=True)])
    writer.finish(frames * info.frame_size if samples is None else samples)
    return f.getvalue()


def read(data: bytes) -> tuple[SnacHeader, list[torch.Tensor]]:
    with SnacReader(io.BytesIO(data)) as r:
        return r.header, r.read_all()


@settings(max_examples=60, deadline=None)
@given(
    info=infos,
    streams=st.integers(1, 3),
    frames=st.integers(0, 40),
    data=st.data(),
)
def test_round_trip_any_block_split(info, streams, frames, data):
    codes = random_codes(info, streams, frames, seed=frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, frames), max_size=6)))
    blob = write(info, codes, streams=streams, blocks=cuts, channels=streams, length=frames * 7)
    header, back = read(blob)
    assert header.info == info and header.frames == frames and header.streams == streams
    assert (header.sample_rate, header.channels, header.length) == (44100, streams, frames * 7)
    assert header.samples == frames * info.frame_size
    for a, b in zip(back, codes, strict=True):
        assert a.dtype == torch.int64 and torch.equal(a, b)
    # reading in blocks of any size gives the same codes
    k = data.draw(st.integers(1, 9))
    with SnacReader(io.BytesIO(blob)) as r:
        parts = list(r.blocks(k))
    if frames:
        joined = [torch.cat(p, dim=-1) for p in zip(*parts, strict=True)]
        assert all(torch.equal(a, b) for a, b in zip(joined, codes, strict=True))
    else:
        assert parts == []


def test_layout_is_the_documented_one():
    """magic, version, u32 header length, JSON, then frame-major codes packed at 12 bits."""
    codes = random_codes(INFO_24K, 2, 3)
    blob = write(INFO_24K, codes, streams=2, samples=5000, notes=["resampled 44100 -> 24000 Hz"])
    magic, version, n = struct.unpack_from("<4sBI", blob)
    assert (magic, version) == (MAGIC, CONTAINER_VERSION) == (b"SNAC", 1)
    header = json.loads(blob[9 : 9 + n])
    assert header["model"] == {
        "sample_rate": 24000,
        "hop_length": 512,
        "vq_strides": [4, 2, 1],
        "codebook_size": 4096,
        "fingerprint": FP.hex(),
    }
    assert {k: header[k] for k in ("sample_rate", "channels", "length", "streams", "samples", "frames")} == {
        "sample_rate": 44100,
        "channels": 2,
        "length": 1000,
        "streams": 2,
        "samples": 5000,
        "frames": 3,
    }
    assert header["notes"] == ["resampled 44100 -> 24000 Hz"]
    payload = blob[9 + n :]
    assert len(payload) == (3 * 2 * 7 * 12 + 7) // 8 == 63  # 12 bits per code, nothing else
    # frame j, stream s: c0[s, j], c1[s, 2j:2j+2], c2[s, 4j:4j+4]
    order = [
        int(x)
        for j in range(3)
        for s in range(2)
        for x in (*codes[0][s, j : j + 1], *codes[1][s, 2 * j : 2 * j + 2], *codes[2][s, 4 * j : 4 * j + 4])
    ]
    assert payload == pack_codes(np.array(order), 12)
    assert header["crc32"] == zlib.crc32(payload)


def test_levels_frames_inverse():
    codes = random_codes(INFO_DEEP, 3, 5)
    frames = levels_to_frames(codes, INFO_DEEP, 3)
    assert frames.shape == (5, 3, INFO_DEEP.codes_per_frame)
    assert all(torch.equal(a, b) for a, b in zip(frames_to_levels(frames, INFO_DEEP), codes, strict=True))


def test_writer_refuses_bad_codes():
    f = io.BytesIO()
    w = SnacWriter(f, INFO_24K, sample_rate=24000, channels=1, length=10)
    with pytest.raises(ContainerError, match="level 1.*whole coarse frames"):
        w.write([torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 8)])
    with pytest.raises(ContainerError, match=r"codes must be in \[0, 4096\)"):
        w.write(
            [
                torch.full((1, 1), 4096),
                torch.zeros(1, 2, dtype=torch.long),
                torch.zeros(1, 4, dtype=torch.long),
            ]
        )
    with pytest.raises(ContainerError, match="1 levels of codes, the model has 3"):
        w.write([torch.zeros(1, 1, dtype=torch.long)])
    with pytest.raises(ContainerError, match="streams=2: must be 1"):
        SnacWriter(f, INFO_24K, sample_rate=24000, channels=3, length=10, streams=2)
    with pytest.raises(ContainerError, match="samples=99999 > frames"):
        w.finish(99999)


# ----------------------------------------------------------------------------- bad files


@pytest.fixture
def blob() -> bytes:
    return write(INFO_24K, random_codes(INFO_24K, 1, 4), streams=1)


def header_of(blob: bytes) -> tuple[dict, int]:
    n = struct.unpack_from("<I", blob, 5)[0]
    return json.loads(blob[9 : 9 + n]), 9 + n


def with_header(blob: bytes, header: dict) -> bytes:
    _, end = header_of(blob)
    body = json.dumps(header).encode()
    return blob[:5] + struct.pack("<I", len(body)) + body + blob[end:]


def test_bad_magic(blob):
    with pytest.raises(CorruptContainer, match="not a .snac file"):
        read(b"RIFF" + blob[4:])
    with pytest.raises(CorruptContainer, match="not a .snac file"):
        read(b"")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version(blob, version):
    with pytest.raises(
        UnsupportedContainerVersion, match=f"version {version}; this snac-stream reads version 1"
    ):
        read(blob[:4] + bytes([version]) + blob[5:])


def test_truncated_anywhere(blob):
    _, end = header_of(blob)
    for cut in (3, 7, end - 1, end, len(blob) - 1):
        with pytest.raises(CorruptContainer, match="truncated|not a .snac"):
            read(blob[:cut])


def test_trailing_bytes(blob):
    with pytest.raises(CorruptContainer, match="1 unexpected bytes after the codes"):
        read(blob + b"\0")


def test_flipped_bit_fails_the_checksum(blob):
    bad = bytearray(blob)
    bad[-3] ^= 0x10
    with pytest.raises(CorruptContainer, match="do not match their checksum"):
        read(bytes(bad))


def test_bad_json_and_fields(blob):
    header, end = header_of(blob)
    with pytest.raises(CorruptContainer, match="not valid JSON"):
        read(blob[:5] + struct.pack("<I", 3) + b"{x}" + blob[end:])
    with pytest.raises(CorruptContainer, match="header of .* bytes"):
        read(blob[:5] + struct.pack("<I", 0xFFFFFFF0) + blob[9:])
    cases = [
        ({"frames": "4"}, "'frames' is '4'"),
        ({"streams": True}, "'streams' is True"),
        ({"samples": -1}, "'samples' is -1"),
        ({"model": {**header["model"], "fingerprint": "zz"}}, "fingerprint"),
        ({"model": {**header["model"], "vq_strides": [4, 3]}}, "not every stride divides the first"),
        ({"model": "24khz"}, "'model' object"),
        ({"notes": [1]}, "notes"),
        ({"samples": 10**9}, "samples=1000000000 > frames"),
    ]
    for change, message in cases:
        with pytest.raises(CorruptContainer, match=message):
            read(with_header(blob, {**header, **change}))
    # a header that claims more frames than the file holds
    with pytest.raises(CorruptContainer, match="truncated: .* bytes of codes expected"):
        read(with_header(blob, {**header, "frames": 5}))


def test_code_out_of_range_for_a_non_power_of_two_codebook():
    info = INFO_ODD  # 50 codes in 6 bits: 50..63 fit the width but are not codes
    blob = bytearray(write(info, random_codes(info, 1, 2), streams=1))
    header, end = header_of(bytes(blob))
    blob[end:] = pack_codes(np.array([63, 1, 2, 3, 4, 5]), 6)
    header["crc32"] = zlib.crc32(bytes(blob[end:]))
    with pytest.raises(CorruptContainer, match="code 63 >= codebook_size 50"):
        read(with_header(bytes(blob), header))


def test_reader_names_the_file(tmp_path, blob):
    path = tmp_path / "x.snac"
    path.write_bytes(blob[:-1])
    with pytest.raises(CorruptContainer, match=f"{path}: truncated"):
        SnacReader(path)


def test_header_only_look_skips_the_codes(blob):
    bad = bytearray(blob)
    bad[-1] ^= 0x01
    with SnacReader(io.BytesIO(bytes(bad)), verify=False) as r:  # a quick look: header only
        assert r.header.frames == 4
    with pytest.raises(CorruptContainer, match="checksum"):
        SnacReader(io.BytesIO(bytes(bad)))
