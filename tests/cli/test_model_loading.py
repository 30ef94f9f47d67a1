"""Which commands may fall back to the embedded default: ``serve``, ``send``, ``listen`` and
``mic`` exit with a clear error (status 2) when their model cannot be loaded — a server must
never serve noise because of a typo or an offline hub; only ``demo``, ``bench`` and ``info``
fall back, loudly, to the seeded random 24 kHz model. ``random:...`` asked for works everywhere."""

from __future__ import annotations

import pytest

from snac_model import DEFAULT_MODEL
from snac_stream.cli.commands import common
from snac_stream.cli.main import main

URL = "ws://127.0.0.1:9/rooms/x"  # never reached: the model is loaded first


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "0", "--model", DEFAULT_MODEL],
        ["send", "--url", URL, "--model", DEFAULT_MODEL, "--input", "x.wav"],
        ["listen", "--url", URL, "--model", DEFAULT_MODEL, "--output", "x.wav"],
        ["mic", "--model", DEFAULT_MODEL, "--input", "x.wav"],
    ],
    ids=lambda argv: argv[0],
)
def test_servers_and_clients_refuse_an_unloadable_model(argv, no_network, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: cannot load model {DEFAULT_MODEL!r}" in err
    assert "Falling back" not in err and "RANDOM" not in err
    assert no_network["downloads"], "the real download path was tried"


def test_a_mistyped_local_model_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "0", "--model", str(tmp_path / "no-such-model")])
    assert exit_info.value.code == 2
    assert "cannot load model" in capsys.readouterr().err


def test_demo_bench_and_info_fall_back_loudly(no_network, capsys):
    model = common.load_model(DEFAULT_MODEL, fallback=True)  # what demo does
    err = capsys.readouterr().err
    assert "Falling back to 'random:24khz'" in err and "NOT meaningful" in err
    assert model.sample_rate == 24000
    assert main(["info", "--json"]) == 0  # info without a model: the default, falling back
    assert "Falling back to 'random:24khz'" in capsys.readouterr().err


def test_random_models_load_everywhere():
    model = common.load_model("random:32khz")
    assert model.sample_rate == 32000 and model.weight_norm_folded
