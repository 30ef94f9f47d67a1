"""Shared fixtures and helpers for the model tests.

- ``small_config(name, **overrides)``: tiny SNAC configurations that exercise the unusual
  paths (odd rates so transposed convs use ``output_padding``, small attention windows,
  2..5 VQ levels, with and without depthwise convs). Noise is off unless overridden, so
  parity with the reference package can be exact.
- ``make_pair(cfg, dtype)``: the reference ``snac.SNAC`` and our ``snac_model.SNAC`` with
  the same (seeded, deliberately non-default) weights, both in eval mode.
- ``make_audio(batch, length)``: a deterministic test signal.

torch runs with 2 threads (``SNAC_TEST_THREADS`` overrides it) and, unless the environment
says otherwise, ``OMP_WAIT_POLICY=PASSIVE`` (see below).

The helpers are plain functions (importable as ``from conftest import ...``) and are also
offered as fixtures of the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import math
import os

# Idle OpenMP workers sleep instead of spinning. With libgomp's default (spin), two torch
# threads on a busy 2-core machine made these tests up to 20x slower (measured: 3.5 s with
# one thread, 75 s with two under load, 4 s with two and a passive wait policy). It must be
# set before torch loads its OpenMP runtime; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

torch.set_num_threads(int(os.environ.get("SNAC_TEST_THREADS", "2")))

settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


SMALL_CONFIGS: dict[str, dict] = {
    # odd encoder/decoder rates (output_padding 1 in both transposed convs), window 4, 2 levels
    "odd": dict(
        sampling_rate=16000,
        encoder_dim=16,
        encoder_rates=[3, 5],
        decoder_dim=64,
        decoder_rates=[5, 3],
        attn_window_size=4,
        codebook_size=64,
        codebook_dim=4,
        vq_strides=[2, 1],
        noise=False,
        depthwise=True,
    ),
    # 5 levels with repeated strides, window 2, full (non-depthwise) convs
    "deep": dict(
        sampling_rate=12000,
        encoder_dim=8,
        encoder_rates=[2, 3, 2],
        decoder_dim=128,
        decoder_rates=[3, 2, 2],
        attn_window_size=2,
        codebook_size=128,
        codebook_dim=8,
        vq_strides=[4, 4, 2, 1, 1],
        noise=False,
        depthwise=False,
    ),
    # no attention, an odd coarse stride, tiny dims
    "plain": dict(
        sampling_rate=8000,
        encoder_dim=4,
        encoder_rates=[2, 3],
        decoder_dim=32,
        decoder_rates=[3, 2],
        attn_window_size=None,
        codebook_size=32,
        codebook_dim=2,
        vq_strides=[3, 1],
        noise=False,
        depthwise=True,
    ),
}


def small_config(name: str = "odd", **overrides) -> dict:
    """A fresh copy of one of :data:`SMALL_CONFIGS` with ``overrides`` applied."""
    return {**copy.deepcopy(SMALL_CONFIGS[name]), **overrides}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move parameters away from their constructor defaults (Snake alphas are all ones,
    weight-norm magnitudes equal the direction norms, LayerNorm is the identity), so that a
    layer that ignored one of them would be caught."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            u = torch.rand(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if name.endswith("alpha"):
                p.copy_(0.5 + u)  # Snake alpha in [0.5, 1.5)
            elif name.endswith("original0") or name.endswith("weight_g"):
                p.mul_(0.75 + 0.5 * u)  # weight-norm magnitude
            elif ".norm." in name:
                p.add_(0.2 * (u - 0.5))  # LayerNorm weight/bias
    return model


def make_pair(cfg: dict, dtype: torch.dtype = torch.float64, seed: int = 0):
    """(reference, ours) with identical weights, in ``dtype`` and eval mode."""
    import snac

    from snac_model import SNAC

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = snac.SNAC(**copy.deepcopy(cfg))
    randomize_(ref, seed)
    ours = SNAC(**copy.deepcopy(cfg))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.to(dtype).eval(), ours.to(dtype).eval()


def make_ours(cfg: dict, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Only our model, with the same weights :func:`make_pair` would give it."""
    from snac_model import SNAC

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SNAC(**copy.deepcopy(cfg))
    randomize_(model, seed)
    return model.to(dtype).eval()


def make_audio(batch: int, length: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """``[batch, 1, length]``: a few chirpy partials plus a little noise, within (-0.9, 0.9)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    rows = []
    for b in range(batch):
        f = 0.01 + 0.05 * torch.rand(3, generator=gen, dtype=torch.float64)
        x = sum((0.25 / (k + 1)) * torch.sin(2 * math.pi * f[k] * t * (1 + 1e-4 * b * t)) for k in range(3))
        x = x + 0.05 * torch.randn(length, generator=gen, dtype=torch.float64)
        rows.append(x)
    return torch.stack(rows).unsqueeze(1).to(dtype)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The CLI's ``main`` sets the process-wide runtime (one thread) when a test runs it in
    process; the tests after it keep the suite's own setting."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Simulate an offline machine: every hub download and every socket connection fails
    (nothing reaches the network). Returns the recorded attempts."""
    import socket

    import huggingface_hub

    attempts: dict[str, list] = {"downloads": [], "connects": []}

    def download(*args, **kwargs):
        attempts["downloads"].append(kwargs)
        raise OSError("network is unreachable (simulated offline)")

    def connect(self, address, *args):
        attempts["connects"].append(address)
        raise OSError(101, "network is unreachable (simulated offline)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: connect(self, address))
    return attempts


@pytest.fixture(name="small_config")
def small_config_fixture():
    return small_config


@pytest.fixture(name="make_pair")
def make_pair_fixture():
    return make_pair


@pytest.fixture(name="make_audio")
def make_audio_fixture():
    return make_audio


def run_async(fn):
    """Run an async test in a fresh event loop (no pytest-asyncio needed), 60 s at most."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return wrapper


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@contextlib.contextmanager
def raises_packet_error(code: int, match: str | None = None):
    """``pytest.raises(PacketError, match=match)`` that also checks the error's close code."""
    from snac_stream.protocol.packets import PacketError

    with pytest.raises(PacketError, match=match) as info:
        yield info
    assert info.value.code == code, f"close code {info.value.code}, expected {code}: {info.value}"


async def close_code(ws, timeout: float = 10.0) -> int | None:
    """Read until the connection closes; the code the server sent (None: no close frame)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None
