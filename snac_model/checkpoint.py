"""Loading and saving checkpoints: local directories, safetensors, the Hugging Face hub.

Published checkpoints are ``config.json`` (exactly the constructor's keyword arguments)
plus ``pytorch_model.bin``. Older saves name weight-norm tensors ``weight_g``/``weight_v``,
newer ones ``parametrizations.weight.original0/1``; both load strictly. ``.bin`` files are
read with ``torch.load(weights_only=True)``: a checkpoint that would execute code is refused.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import SNAC

WEIGHTS_BIN = "pytorch_model.bin"
WEIGHTS_SAFETENSORS = "model.safetensors"
CONFIG = "config.json"
_LEGACY = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the model."""


def read_config(path: str | os.PathLike) -> dict:
    from .model import SNAC

    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}: a checkpoint directory needs {CONFIG}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object of SNAC constructor arguments")
    allowed = set(inspect.signature(SNAC.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise CheckpointError(f"{path} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    return config


def canonical_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy ``weight_g``/``weight_v`` keys to the parametrization layout."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _LEGACY.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        out[key] = value
    return out


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{path} needs the safetensors package: pip install 'snac-stream[hub]'"
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError (corrupt header/data), OSError
            raise CheckpointError(f"cannot read {path} as a safetensors file: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0].split(". ")[0]
        raise CheckpointError(
            f"refusing {path}: torch.load(weights_only=True) refused it ({detail}); it is corrupt or "
            "holds objects other than tensors, and loading it unrestricted could execute code"
        ) from None
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_state_dict(model: SNAC, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load (either weight-norm layout) with an error naming missing/unexpected keys."""
    state_dict = canonical_state_dict(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:

        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"{source} does not match the model config"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {show(shapes)}")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails in seconds, not after
    huggingface_hub's retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_download(repo_id: str, filename: str, **kwargs) -> str:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(
            f"{repo_id!r} is not a local directory, and downloading it needs huggingface_hub: "
            "pip install 'snac-stream[hub]'"
        ) from None
    advice = (
        f"If this machine is offline, pass a local directory with {CONFIG} and {WEIGHTS_BIN}, "
        "or use a seeded random model such as 'random:24khz'"
    )
    try:  # the local cache first: no network needed for a model downloaded before
        return hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True, **kwargs)
    except Exception:
        pass
    if not _hub_reachable():
        raise CheckpointError(f"cannot reach the Hugging Face hub to download {repo_id!r}. {advice}")
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, **kwargs)
    except Exception as e:  # unknown repo, missing file, network trouble: all end here
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"could not get {filename} of {repo_id!r} from the Hugging Face hub "
            f"({type(e).__name__}: {first_line}). {advice}"
        ) from None


def load_pretrained(repo_id_or_dir: str | os.PathLike, cls=None, device: str = "cpu", **hub_kwargs) -> SNAC:
    """Build the model from ``config.json`` and load its weights strictly; ``eval()`` mode."""
    from .model import SNAC

    cls = cls or SNAC
    path = Path(repo_id_or_dir)
    if path.is_dir():
        config_path = path / CONFIG
        candidates = [path / WEIGHTS_SAFETENSORS, path / WEIGHTS_BIN]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path} has no weights: expected {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN}")
    elif path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory holding {CONFIG}")
    else:
        repo_id = str(repo_id_or_dir)
        if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
            raise CheckpointError(f"{repo_id!r} is neither a local directory nor a hub id like 'owner/name'")
        config_path = Path(_hub_download(repo_id, CONFIG, **hub_kwargs))
        weights = Path(_hub_download(repo_id, WEIGHTS_BIN, **hub_kwargs))
    try:
        model = cls(**read_config(config_path))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path} is not a valid SNAC configuration: {e}") from None
    load_state_dict(model, read_weights(weights), source=str(weights))
    model.fingerprint()
    return model.to(device).eval()


def save_pretrained(model: SNAC, directory: str | os.PathLike, safetensors: bool = False) -> None:
    """Write ``config.json`` and ``pytorch_model.bin`` (or ``model.safetensors``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps(model.config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(directory / WEIGHTS_SAFETENSORS))
    else:
        torch.save(state, directory / WEIGHTS_BIN)
