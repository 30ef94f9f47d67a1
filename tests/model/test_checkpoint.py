"""Checkpoints: our own saves in both weight-norm key layouts and both file formats, and
every way a checkpoint can be wrong. No test touches the network."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import make_audio, make_ours, small_config

import snac_model
from snac_model import HUB_IDS, PUBLISHED_CONFIGS, SNAC, CheckpointError, load_model, random_model

LEGACY = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}


def to_legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The older weight-norm layout: ``...weight_g`` / ``...weight_v``."""
    out = {}
    for key, value in state.items():
        for new, old in LEGACY.items():
            if key.endswith(new):
                key = key[: -len(new)] + old
        out[key] = value
    return out


def write_checkpoint(directory: Path, config: dict, state: dict, fmt: str = "bin") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="module")
def model():
    return make_ours(small_config("odd"), torch.float32, seed=3)


@pytest.fixture(scope="module")
def audio(model):
    return make_audio(1, 2 * model.pad_multiple + 7, torch.float32, seed=3)


def assert_same_model(loaded: SNAC, model: SNAC, audio: torch.Tensor) -> None:
    assert not loaded.training
    assert loaded.config == model.config
    expected = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.fingerprint() == model.fingerprint()
    out, codes = loaded(audio)
    out_ref, codes_ref = model(audio)
    assert all(torch.equal(a, b) for a, b in zip(codes, codes_ref, strict=True))
    assert torch.equal(out, out_ref)


# ---------------------------------------------------------------- loading what we save


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("layout", ["parametrizations", "legacy"])
def test_load_own_checkpoint(tmp_path, model, audio, layout, fmt):
    state = model.state_dict()
    if layout == "legacy":
        state = to_legacy(state)
        assert any(k.endswith(".weight_g") for k in state) and any(k.endswith(".weight_v") for k in state)
        assert not any("parametrizations" in k for k in state)
    write_checkpoint(tmp_path / "ckpt", model.config, state, fmt)
    loaded = SNAC.from_pretrained(str(tmp_path / "ckpt"))
    assert_same_model(loaded, model, audio)


@pytest.mark.parametrize("safetensors", [False, True])
def test_save_pretrained_roundtrip(tmp_path, model, audio, safetensors):
    model.save_pretrained(str(tmp_path), safetensors=safetensors)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["config.json", "model.safetensors" if safetensors else "pytorch_model.bin"])
    assert json.loads((tmp_path / "config.json").read_text()) == model.config
    assert_same_model(SNAC.from_pretrained(tmp_path), model, audio)
    assert_same_model(load_model(str(tmp_path)), model, audio)


def test_reference_package_reads_our_checkpoint(tmp_path, model, audio):
    import snac

    model.save_pretrained(str(tmp_path))
    ref = snac.SNAC.from_pretrained(str(tmp_path))
    with torch.inference_mode():
        codes_ref = ref.encode(audio)
    assert all(torch.equal(a, b) for a, b in zip(model.encode(audio), codes_ref, strict=True))


def test_state_dict_wrapped_in_state_dict_key(tmp_path, model, audio):
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "pytorch_model.bin")
    assert_same_model(SNAC.from_pretrained(tmp_path), model, audio)


def test_from_config(tmp_path, model):
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    assert SNAC.from_config(str(tmp_path / "config.json")).config == model.config


# ---------------------------------------------------------------- unsafe checkpoints


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_refuses_checkpoint_that_would_execute_code(tmp_path, model, writer):
    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(model.config))
    state = dict(model.state_dict())
    state["payload"] = Exploit(marker)
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        if writer == "torch.save":
            torch.save(state, f)
        else:
            pickle.dump(state, f)
    # the payload is live: unpickling it the unsafe way does run it
    probe = tmp_path / "probe_ran"
    pickle.loads(pickle.dumps(Exploit(probe)))
    assert probe.exists()

    with pytest.raises(CheckpointError, match=r"refusing .*pytorch_model.bin.*execute code") as info:
        SNAC.from_pretrained(ckpt)
    if writer == "torch.save":
        assert "exec" in str(info.value).split("execute code")[0]  # names the offending global
    assert "\n" not in str(info.value)
    assert not marker.exists(), "loading the checkpoint executed its payload"


# ---------------------------------------------------------------- broken checkpoints


def test_missing_config(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing .*config.json"):
        SNAC.from_pretrained(tmp_path)


def test_missing_weights(tmp_path, model):
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    with pytest.raises(CheckpointError, match=r"no weights: expected model.safetensors or pytorch_model.bin"):
        SNAC.from_pretrained(tmp_path)


def test_bad_config_json(tmp_path, model):
    write_checkpoint(tmp_path, model.config, model.state_dict())
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SNAC.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        SNAC.from_pretrained(tmp_path)


def test_unknown_config_keys(tmp_path, model):
    write_checkpoint(tmp_path, {**model.config, "use_xpos": True, "dropout": 0.1}, model.state_dict())
    with pytest.raises(CheckpointError, match=r"unknown keys \['dropout', 'use_xpos'\]"):
        SNAC.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(tmp_path, model):
    state = dict(model.state_dict())
    gone = "decoder.model.0.bias"
    del state[gone]
    state["decoder.extra.weight"] = torch.zeros(3)
    write_checkpoint(tmp_path, model.config, state)
    with pytest.raises(CheckpointError) as info:
        SNAC.from_pretrained(tmp_path)
    msg = str(info.value)
    assert f"missing keys (1): {gone}" in msg
    assert "unexpected keys (1): decoder.extra.weight" in msg


def test_many_missing_keys_are_summarised(tmp_path, model):
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    write_checkpoint(tmp_path, model.config, state)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): encoder\..* \(\+\d+ more\)"):
        SNAC.from_pretrained(tmp_path)


def test_shape_mismatch_is_named(tmp_path, model):
    state = dict(model.state_dict())
    key = "quantizer.quantizers.0.codebook.weight"
    state[key] = torch.zeros(32, 4)
    write_checkpoint(tmp_path, model.config, state)
    with pytest.raises(
        CheckpointError, match=rf"shape mismatches \(1\): {key}: checkpoint \(32, 4\) vs model \(64, 4\)"
    ):
        SNAC.from_pretrained(tmp_path)


def test_config_and_weights_of_different_models(tmp_path, model):
    write_checkpoint(tmp_path, small_config("deep"), model.state_dict())
    with pytest.raises(CheckpointError, match="does not match the model config"):
        SNAC.from_pretrained(tmp_path)


def test_not_a_state_dict(tmp_path, model):
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    torch.save(torch.zeros(3), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        SNAC.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        SNAC.from_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path, model):
    write_checkpoint(tmp_path, model.config, model.state_dict(), "safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
        SNAC.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
        SNAC.from_pretrained(tmp_path)


def test_a_file_is_not_a_checkpoint_directory(tmp_path, model):
    write_checkpoint(tmp_path, model.config, model.state_dict())
    with pytest.raises(CheckpointError, match="is a file"):
        SNAC.from_pretrained(tmp_path / "pytorch_model.bin")


# ---------------------------------------------------------------- the hub (offline)


def test_hub_id_offline_is_a_clear_error(no_network):
    with pytest.raises(CheckpointError) as info:
        SNAC.from_pretrained("hubertsiuzdak/snac_24khz")
    msg = str(info.value)
    assert "hubertsiuzdak/snac_24khz" in msg and "offline" in msg
    assert "random:24khz" in msg and "local directory" in msg
    assert no_network["downloads"], "the hub client was never asked"
    assert all(call["repo_id"] == "hubertsiuzdak/snac_24khz" for call in no_network["downloads"])


def test_neither_directory_nor_hub_id(no_network, tmp_path):
    for spec in (str(tmp_path / "does_not_exist"), "a/b/c", "just-a-name"):
        with pytest.raises(CheckpointError, match="neither a local directory nor a hub id"):
            SNAC.from_pretrained(spec)
    assert no_network["downloads"] == [] and no_network["connects"] == []


# ---------------------------------------------------------------- load_model / registry


def test_load_model_random():
    m = load_model("random:24khz")
    assert isinstance(m, SNAC) and not m.training
    assert m.config == {**PUBLISHED_CONFIGS["24khz"], "latent_dim": None}
    assert m.fingerprint() == load_model("random:24khz").fingerprint() == random_model("24khz").fingerprint()
    assert load_model("random:24khz:1").fingerprint() != m.fingerprint()
    # the global RNG is neither used nor disturbed
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    load_model("random:24khz")
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("spec", ["random:", "random:16khz", "random:24khz:x", "random:24khz:1:2"])
def test_load_model_bad_random_spec(spec):
    with pytest.raises(ValueError, match="random:24khz|unknown architecture"):
        load_model(spec)


def test_load_model_fallback_is_loud(no_network, capsys):
    m = load_model(HUB_IDS["24khz"], fallback_to_random=True)
    err = capsys.readouterr().err
    assert "WARNING" in err and "RANDOM" in err and "random:24khz" in err
    assert "hubertsiuzdak/snac_24khz" in err
    assert m.fingerprint() == random_model("24khz").fingerprint()
    assert snac_model.DEFAULT_MODEL == HUB_IDS["24khz"]


def test_load_model_without_fallback_raises(no_network, capsys):
    with pytest.raises(CheckpointError):
        load_model(HUB_IDS["32khz"])
    # an unpublished hub id has no architecture to fall back to
    with pytest.raises(CheckpointError):
        load_model("someone/not_snac", fallback_to_random=True)
    assert "WARNING" not in capsys.readouterr().err
