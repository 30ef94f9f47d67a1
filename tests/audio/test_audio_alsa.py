"""The real sounddevice/PortAudio path without a sound card, via ALSA plugin devices.

A private ``$HOME/.asoundrc`` (loaded by the system ``alsa.conf``) defines two PCMs that PortAudio lists
as ALSA devices:

* ``snacmic``: ``type file`` with a ``null`` slave and ``infile``: capture returns the raw float32
  contents of a file we wrote;
* ``snacspk``: ``type file`` with a ``null`` slave: playback is appended to a raw float32 file.

Neither device is paced by a clock (the null slave is always ready), so the callbacks run as fast as
the CPU allows; assertions are on content, never on timing. PortAudio reads the ALSA configuration when
sounddevice is imported, so each scenario runs in a subprocess with HOME set beforehand.
Needs libportaudio2 (which pulls in libasound2 and libasound2-data); no kernel sound modules.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MIC_VALUE = 0.25  # every captured sample must equal this (the infile holds only this value)

ASOUNDRC = """\
pcm.snacmic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.snacspk {{
    type file
    slave.pcm "null"
    file "{outfile}"
    format "raw"
}}
"""

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from dataclasses import asdict
    import numpy as np
    import snac_stream.audio.devices as aio

    res = {"lazy": "sounddevice" not in sys.modules}
    devices = aio.list_devices()
    res["devices"] = [[d["name"], d["hostapi"]] for d in devices]
    res["default_input"] = aio.default_input_available()
    res["default_output"] = aio.default_output_available()
    names = {d["name"] for d in devices if d["hostapi"] == "ALSA"}
    if MODE == "nodevice":
        for cls in (aio.Microphone, aio.Speaker):
            try:
                cls(16000).start()
                res[cls.__name__] = "opened"
            except aio.AudioUnavailableError as e:
                res[cls.__name__] = str(e)
    elif {"snacmic", "snacspk"} <= names:
        with aio.Microphone(24000, device="snacmic", capacity_s=1.0) as mic:
            x = mic.read_blocking(4800, timeout=20.0)
        res["mic_n"] = int(x.size)
        res["mic_values"] = np.unique(x).tolist()[:10]
        res["mic_stats"] = asdict(mic.stats)

        sig = (0.5 * np.sin(2 * np.pi * 440 * np.arange(4800) / 24000) + 0.01).astype(np.float32)
        spk = aio.Speaker(24000, device="snacspk", prefill_ms=20)
        spk.write(sig)
        spk.finish()  # the unpaced device would otherwise run dry before drain() and count an underflow
        with spk:
            res["drained"] = spk.drain(timeout=20.0)
        res["spk_stats"] = asdict(spk.stats)

        try:
            aio.Microphone(100, device="snacmic").start()  # outside ALSA's supported range
            res["rate_error"] = None
        except aio.AudioUnavailableError as e:
            res["rate_error"] = str(e)
    print("RESULT " + json.dumps(res))
    """
)


def run_scenario(mode: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALSA_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", f"MODE = {mode!r}\n{SCRIPT}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    if ctypes.util.find_library("asound") is None:
        pytest.skip("ALSA library not found: apt-get install libasound2 (a dependency of libportaudio2)")
    probe = subprocess.run([sys.executable, "-c", "import sounddevice"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"sounddevice/PortAudio not importable: {probe.stderr.strip().splitlines()[-1:]}")


def test_real_microphone_and_speaker_through_alsa_file_devices(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    infile, outfile = tmp_path / "mic.f32", tmp_path / "spk.f32"
    np.full(48_000, MIC_VALUE, np.float32).tofile(infile)
    (home / ".asoundrc").write_text(ASOUNDRC.format(infile=infile, outfile=outfile))

    res = run_scenario("alsa", home)
    assert res["lazy"], "importing snac_stream.audio.devices imported sounddevice"
    names = [name for name, api in res["devices"] if api == "ALSA"]
    if not {"snacmic", "snacspk"} <= set(names):
        pytest.skip(f"PortAudio reports no ALSA device for the asoundrc PCMs; devices: {res['devices']}")

    # capture: samples flowed from the file through PortAudio's callback into the ring buffer
    assert res["mic_n"] >= 4800 and res["mic_values"] == [MIC_VALUE]
    assert res["mic_stats"]["captured_samples"] >= res["mic_n"] and res["mic_stats"]["callbacks"] > 0

    # playback: the exact float32 bytes of the played signal are in the device's output file
    assert res["drained"]
    sig = (0.5 * np.sin(2 * np.pi * 440 * np.arange(4800) / 24000) + 0.01).astype(np.float32)
    assert res["spk_stats"]["played_samples"] == sig.size and res["spk_stats"]["underflow_events"] == 0
    data = np.fromfile(outfile, np.float32)
    assert data.size >= sig.size and sig.tobytes() in data.tobytes()

    # a rate the device refuses gives AudioUnavailableError naming device, rate and a remedy
    err = res["rate_error"]
    assert err and "'snacmic'" in err and "100 Hz" in err and "sample rate" in err


def test_real_portaudio_without_devices(tmp_path):
    home = tmp_path / "empty_home"
    home.mkdir()
    res = run_scenario("nodevice", home)
    if res["devices"]:
        pytest.skip(f"this machine has audio devices: {res['devices']}")
    assert res["default_input"] is False and res["default_output"] is False
    assert res["Microphone"].startswith("no input device found") and "--input FILE" in res["Microphone"]
    assert res["Speaker"].startswith("no output device found")
