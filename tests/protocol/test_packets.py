"""Wire format: round trips over random configurations and every specific error."""

from __future__ import annotations

import struct
import types

import numpy as np
import pytest
import torch
from conftest import raises_packet_error
from hypothesis import given, settings
from hypothesis import strategies as st

from snac_stream.protocol.packets import (
    DEFAULT_MAX_PACKET,
    PROTOCOL_VERSION,
    CloseCode,
    CodePacket,
    End,
    EndReason,
    ErrorPacket,
    Hello,
    Kind,
    ModelInfo,
    PacketError,
    decode_body,
    decode_header,
    decode_packet,
    encode_packet,
    pack_codes,
    split_codes,
    stream_packets,
    unpack_codes,
    wire_overhead,
    ws_frame_overhead,
)

FP = bytes(range(8))
INFO_24K = ModelInfo(24000, 512, (4, 2, 1), 4096, FP)
INFO_32K = ModelInfo(32000, 384, (8, 4, 2, 1), 4096, FP)


def fake_model(**overrides):
    attrs = dict(sample_rate=24000, hop_length=512, vq_strides=[4, 2, 1], codebook_size=4096)
    attrs.update(overrides)
    return types.SimpleNamespace(**attrs, fingerprint=lambda: FP)


def random_codes(info: ModelInfo, n_frames: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, info.codebook_size, (n_frames * r,), generator=g) for r in info.codes_per_level]


def all_packets(info: ModelInfo, n_frames: int = 5, per_packet: int = 2) -> list:
    return [
        *stream_packets(random_codes(info, n_frames), info, n_frames * info.frame_size - 7, per_packet),
        ErrorPacket(4007, "bad model: ünïcode"),
    ]


# ----------------------------------------------------------------------------- ModelInfo


def test_model_info_from_model_and_rates():
    info = ModelInfo.from_model(fake_model())
    assert info == INFO_24K
    assert info.frame_size == 2048
    assert info.codes_per_frame == 7
    assert info.bits_per_code == 12
    assert info.nominal_bps == pytest.approx(984.375)  # 7 * 12 bits per 2048 samples at 24 kHz
    assert INFO_32K.codes_per_frame == 15 and INFO_32K.frame_size == 3072
    assert INFO_32K.nominal_bps == pytest.approx(15 * 12 * 32000 / 3072)


@pytest.mark.parametrize(
    ("size", "bits"),
    [(2, 1), (3, 2), (4, 2), (5, 3), (1000, 10), (4096, 12), (4097, 13), (65535, 16), (65536, 16)],
)
def test_bits_per_code(size, bits):
    assert ModelInfo(16000, 320, (1,), size, FP).bits_per_code == bits


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(vq_strides=(4, 3, 1)),  # 3 does not divide 4
        dict(vq_strides=()),
        dict(codebook_size=1),
        dict(codebook_size=65537),
        dict(fingerprint=b"short"),
        dict(sample_rate=0),
        dict(hop_length=-1),
    ],
)
def test_model_info_rejects_invalid(kwargs):
    base = dict(sample_rate=24000, hop_length=512, vq_strides=(4, 2, 1), codebook_size=4096, fingerprint=FP)
    with pytest.raises(ValueError):
        ModelInfo(**{**base, **kwargs})


def test_check_compatible_names_fields():
    INFO_24K.check_compatible(ModelInfo.from_model(fake_model()))
    other = ModelInfo.from_model(fake_model(sample_rate=32000, codebook_size=1024))
    with raises_packet_error(CloseCode.MODEL_MISMATCH) as e:
        INFO_24K.check_compatible(other)
    assert "sample_rate" in str(e.value) and "codebook_size" in str(e.value)
    assert "hop_length" not in str(e.value)


# ----------------------------------------------------------------------------- packing


def test_pack_12_bit_layout():
    # code k occupies bits [12k, 12k+12) of the little-endian bit string
    assert pack_codes(np.array([0xABC, 0x123]), 12) == bytes([0xBC, 0x3A, 0x12])
    assert pack_codes(np.array([0xABC]), 12) == bytes([0xBC, 0x0A])
    assert unpack_codes(bytes([0xBC, 0x3A, 0x12]), 2, 12).tolist() == [0xABC, 0x123]


def test_codes_are_frame_major():
    info = ModelInfo(24000, 512, (2, 1), 256, FP)  # 8 bits: one byte per code
    pkt = CodePacket(0, 0, 0, [torch.tensor([10, 20]), torch.tensor([11, 12, 21, 22])])
    data = encode_packet(pkt, info)
    assert list(data[16:]) == [10, 11, 12, 20, 21, 22]


@st.composite
def configs(draw):
    s0 = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16]))
    divisors = [d for d in range(1, s0 + 1) if s0 % d == 0]
    rest = draw(st.lists(st.sampled_from(divisors), max_size=4))
    cb = draw(st.one_of(st.integers(2, 65536), st.sampled_from([2, 3, 4095, 4096, 4097, 65535, 65536])))
    return ModelInfo(
        sample_rate=draw(st.integers(1, 200_000)),
        hop_length=draw(st.integers(1, 4096)),
        vq_strides=(s0, *rest),
        codebook_size=cb,
        fingerprint=draw(st.binary(min_size=8, max_size=8)),
    )


@settings(max_examples=150)
@given(
    info=configs(),
    n_frames=st.integers(1, 40),
    per_packet=st.integers(1, 9),
    stream_id=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**31),
    extreme=st.booleans(),
)
def test_round_trip_random_configs(info, n_frames, per_packet, stream_id, seed, extreme):
    codes = random_codes(info, n_frames, seed)
    if extreme:  # the largest and smallest codes pack too
        codes = [torch.where(c % 2 == 0, info.codebook_size - 1, 0) for c in codes]
    total = n_frames * info.frame_size - seed % info.frame_size
    packets = stream_packets(codes, info, total, per_packet, stream_id=stream_id)
    assert len(packets) == 2 + -(-n_frames // per_packet)
    received = []
    for packet in packets:
        data = encode_packet(packet, info)
        if isinstance(packet, CodePacket):
            assert len(data) == 16 + info.payload_bytes(packet.n_frames)
        back = decode_packet(data, info)
        assert back == packet
        received.append(back)
    assert received[0].info == info
    joined = [torch.cat([p.codes[i] for p in received[1:-1]]) for i in range(info.n_levels)]
    assert all(torch.equal(a, b) for a, b in zip(joined, codes, strict=True))
    end = received[-1]
    assert (end.seq, end.total_frames, end.total_samples) == (len(packets) - 2, n_frames, total)


@given(
    code=st.integers(0, 0xFFFF),
    message=st.text(max_size=300),
    reason=st.sampled_from(list(EndReason)),
    values=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
def test_round_trip_control_packets(code, message, reason, values):
    assert decode_packet(encode_packet(ErrorPacket(code, message))) == ErrorPacket(code, message)
    end = End(*values, total_samples=values[2] * 7, reason=reason)
    assert decode_packet(encode_packet(end)) == end


def test_split_codes_accepts_batch_of_one_and_offsets():
    codes = [c[None] for c in random_codes(INFO_32K, 7)]
    packets = split_codes(codes, INFO_32K, 3, stream_id=5, first_seq=10, first_frame=100)
    assert [(p.seq, p.first_frame, p.n_frames) for p in packets] == [(10, 100, 3), (11, 103, 3), (12, 106, 1)]
    with pytest.raises(ValueError):
        split_codes([c.expand(2, -1) for c in codes], INFO_32K, 3)


def test_encode_rejects_bad_codes():
    codes = random_codes(INFO_24K, 2)
    with pytest.raises(ValueError):  # no ModelInfo
        encode_packet(CodePacket(0, 0, 0, codes))
    with pytest.raises(ValueError):  # wrong length of level 2
        encode_packet(CodePacket(0, 0, 0, [codes[0], codes[1], codes[2][:-1]]), INFO_24K)
    with raises_packet_error(CloseCode.CODE_OUT_OF_RANGE):
        encode_packet(CodePacket(0, 0, 0, [codes[0] + 4096, codes[1], codes[2]]), INFO_24K)
    with raises_packet_error(CloseCode.CODE_OUT_OF_RANGE):
        encode_packet(CodePacket(0, 0, 0, [codes[0] - 4096, codes[1], codes[2]]), INFO_24K)


# ----------------------------------------------------------------------------- errors


def test_one_error_class_carries_its_close_code():
    e = PacketError("bad thing", CloseCode.TRUNCATED)
    assert isinstance(e, ValueError) and str(e) == "bad thing"
    assert e.code == CloseCode.TRUNCATED == 4001
    assert PacketError("other").code == CloseCode.PROTOCOL_ERROR
    # the wire's close codes (a contract with clients): values as documented in docs/protocol.md
    assert [(c.name, c.value) for c in CloseCode][:9] == [
        ("PROTOCOL_ERROR", 4000),
        ("TRUNCATED", 4001),
        ("OVERSIZED", 4002),
        ("UNSUPPORTED_VERSION", 4003),
        ("UNKNOWN_KIND", 4004),
        ("MALFORMED", 4005),
        ("CODE_OUT_OF_RANGE", 4006),
        ("MODEL_MISMATCH", 4007),
        ("UNEXPECTED_PACKET", 4008),
    ]
    assert len(set(CloseCode)) == len(CloseCode.__members__)
    assert all(4000 <= c <= 4999 for c in CloseCode)


def test_decode_body_after_the_header_equals_decode_packet():
    for packet in all_packets(INFO_24K):
        data = encode_packet(packet, INFO_24K)
        assert decode_body(data, decode_header(data, INFO_24K), INFO_24K) == packet
    codes = encode_packet(CodePacket(0, 0, 0, random_codes(INFO_24K, 2)), INFO_24K)
    head = decode_header(codes + b"\0")  # without the model the payload length is not known
    with raises_packet_error(CloseCode.MALFORMED, match="trailing"):
        decode_body(codes + b"\0", head, INFO_24K)
    with raises_packet_error(CloseCode.UNEXPECTED_PACKET):
        decode_body(codes, head, None)


@pytest.mark.parametrize("info", [INFO_24K, ModelInfo(8000, 80, (3, 1), 3, FP)])
def test_truncated(info):
    for packet in all_packets(info):
        data = encode_packet(packet, info)
        for cut in range(len(data)):
            with raises_packet_error(CloseCode.TRUNCATED):
                decode_packet(data[:cut], info)


def test_oversized():
    data = encode_packet(CodePacket(0, 0, 0, random_codes(INFO_24K, 100)), INFO_24K)
    assert decode_packet(data, INFO_24K, max_size=len(data)).n_frames == 100
    with raises_packet_error(CloseCode.OVERSIZED):
        decode_packet(data, INFO_24K, max_size=len(data) - 1)
    with raises_packet_error(CloseCode.OVERSIZED):
        decode_packet(b"\x01\x04" + b"\0" * DEFAULT_MAX_PACKET)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version):
    for packet in all_packets(INFO_24K):
        data = bytearray(encode_packet(packet, INFO_24K))
        data[0] = version
        with raises_packet_error(CloseCode.UNSUPPORTED_VERSION):
            decode_packet(bytes(data), INFO_24K)


@pytest.mark.parametrize("kind", [0, 5, 17, 255])
def test_wrong_kind(kind):
    with raises_packet_error(CloseCode.UNKNOWN_KIND):
        decode_packet(bytes([PROTOCOL_VERSION, kind]) + b"\0" * 30, INFO_24K)


def test_trailing_garbage():
    for packet in all_packets(INFO_24K):
        data = encode_packet(packet, INFO_24K)
        with raises_packet_error(CloseCode.MALFORMED, match="trailing"):
            decode_packet(data + b"\0", INFO_24K)


def test_code_out_of_range_when_codebook_is_not_power_of_two():
    info = ModelInfo(16000, 320, (2, 1), 5, FP)  # 3 bits per code, 5..7 are invalid
    header = struct.pack("<BBIIIH", PROTOCOL_VERSION, Kind.CODES, 0, 0, 0, 1)
    assert decode_packet(header + pack_codes(np.array([4, 0, 4]), 3), info).codes[0].tolist() == [4]
    with raises_packet_error(CloseCode.CODE_OUT_OF_RANGE):
        decode_packet(header + pack_codes(np.array([1, 7, 2]), 3), info)


def test_malformed_fields():
    info = ModelInfo(16000, 320, (2, 1), 5, FP)
    header = struct.pack("<BBIIIH", PROTOCOL_VERSION, Kind.CODES, 0, 0, 0, 1)
    with raises_packet_error(CloseCode.MALFORMED, match="padding"):  # 9 bits used, 7 padding bits
        decode_packet(header + bytes([0, 0x80]), info)
    with raises_packet_error(CloseCode.MALFORMED, match="0 frames"):
        decode_packet(struct.pack("<BBIIIH", PROTOCOL_VERSION, Kind.CODES, 0, 0, 0, 0), info)
    hello = bytearray(encode_packet(Hello(INFO_24K, 1)))
    hello[-2:] = struct.pack("<H", 3)  # stride 3 does not divide 4
    with raises_packet_error(CloseCode.MALFORMED):
        decode_packet(bytes(hello))
    end = bytearray(encode_packet(End(0, 1, 1, 2048)))
    end[-1] = 9  # unknown reason
    with raises_packet_error(CloseCode.MALFORMED):
        decode_packet(bytes(end))
    with raises_packet_error(CloseCode.MALFORMED):  # more samples than frames can hold
        decode_packet(encode_packet(End(0, 1, 1, 2049)), INFO_24K)
    with raises_packet_error(CloseCode.MALFORMED):
        decode_packet(struct.pack("<BBHH", PROTOCOL_VERSION, Kind.ERROR, 4000, 2) + b"\xff\xfe")


def test_codes_need_model_info():
    data = encode_packet(CodePacket(0, 0, 0, random_codes(INFO_24K, 1)), INFO_24K)
    with raises_packet_error(CloseCode.UNEXPECTED_PACKET):
        decode_packet(data)
    head = decode_header(data)  # a relay can read the header without the model
    assert (head.kind, head.n_frames, head.size) == (Kind.CODES, 1, len(data))


@settings(max_examples=400)
@given(data=st.binary(max_size=200), with_info=st.booleans())
def test_garbage_raises_only_packet_errors(data, with_info):
    try:
        decode_packet(data, INFO_24K if with_info else None)
    except PacketError:
        pass


@settings(max_examples=300)
@given(
    index=st.integers(0, 5),
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
    cut=st.integers(0, 10_000),
)
def test_mutated_packets_raise_only_packet_errors(index, position, value, cut):
    info = ModelInfo(8000, 80, (3, 1), 3000, FP)
    data = bytearray(encode_packet(all_packets(info)[index], info))
    data[position % len(data)] = value
    try:
        decode_packet(bytes(data[: max(1, cut % (len(data) + 2))]), info)
    except PacketError:
        pass


# ----------------------------------------------------------------------------- overhead


def test_ws_frame_overhead():
    assert ws_frame_overhead(125, masked=False) == 2
    assert ws_frame_overhead(126, masked=False) == 4
    assert ws_frame_overhead(65535, masked=True) == 8
    assert ws_frame_overhead(65536, masked=False) == 10


def test_wire_overhead_24k():
    one = wire_overhead(INFO_24K, 1)
    # 16-byte header + 11 bytes of codes (84 bits) + 2 frame header + 4 mask bytes per 85.3 ms
    assert one.packet_bytes == 27 and one.frame_bytes == 6
    assert one.wire_bps == pytest.approx(8 * 33 * 24000 / 2048)
    many = wire_overhead(INFO_24K, 12, client_to_server=False)
    assert many.frame_bytes == 4 and many.overhead < 0.2 < one.overhead
    assert many.latency_s == pytest.approx(12 * 2048 / 24000)
