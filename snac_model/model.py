"""SNAC: encoder -> residual VQ with per-level strides -> decoder (weight-compatible with `snac`)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import torch
from torch import nn

from .layers import Decoder, Encoder
from .noise import NoiseSource
from .validation import check_audio, check_codes, check_config
from .vq import ResidualVectorQuantize


class SNAC(nn.Module):
    """Multi-Scale Neural Audio Codec.

    The constructor takes exactly the keyword arguments of the published ``config.json``
    files, with the reference constructor's defaults. Lengths (all in samples / frames):

    - ``encode`` right-pads audio with zeros to a multiple of ``pad_multiple`` =
      ``hop_length * lcm(vq_strides[0], attn_window_size or 1)`` samples; level i then has
      ``T_pad / (hop_length * vq_strides[i])`` codes.
    - ``decode`` of ``n`` ticks (latent frames) returns ``n * decoder_hop`` samples.
    """

    def __init__(
        self,
        sampling_rate: int = 44100,
        encoder_dim: int = 64,
        encoder_rates: Sequence[int] = (3, 3, 7, 7),
        latent_dim: int | None = None,
        decoder_dim: int = 1536,
        decoder_rates: Sequence[int] = (7, 7, 3, 3),
        attn_window_size: int | None = 32,
        codebook_size: int = 4096,
        codebook_dim: int = 8,
        vq_strides: Sequence[int] = (8, 4, 2, 1),
        noise: bool = True,
        depthwise: bool = True,
    ):
        super().__init__()
        self.config = check_config(
            sampling_rate=sampling_rate,
            encoder_dim=encoder_dim,
            encoder_rates=encoder_rates,
            latent_dim=latent_dim,
            decoder_dim=decoder_dim,
            decoder_rates=decoder_rates,
            attn_window_size=attn_window_size,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            vq_strides=vq_strides,
            noise=noise,
            depthwise=depthwise,
        )
        self.sampling_rate = int(sampling_rate)
        self.encoder_dim = encoder_dim
        self.encoder_rates = list(encoder_rates)
        self.decoder_dim = decoder_dim
        self.decoder_rates = list(decoder_rates)
        self.latent_dim = latent_dim or encoder_dim * 2 ** len(encoder_rates)
        self.hop_length = math.prod(self.encoder_rates)
        self.n_codebooks = len(vq_strides)
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.vq_strides = list(vq_strides)
        self.attn_window_size = attn_window_size
        self.noise = noise
        self.encoder = Encoder(
            encoder_dim, self.encoder_rates, depthwise=depthwise, attn_window_size=attn_window_size
        )
        self.quantizer = ResidualVectorQuantize(
            input_dim=self.latent_dim,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            vq_strides=self.vq_strides,
        )
        self.decoder = Decoder(
            self.latent_dim,
            decoder_dim,
            self.decoder_rates,
            noise,
            depthwise=depthwise,
            attn_window_size=attn_window_size,
        )
        self._fingerprint: bytes | None = None

    # ------------------------------------------------------------------ description
    @property
    def sample_rate(self) -> int:
        return self.sampling_rate

    @property
    def decoder_hop(self) -> int:
        """Output samples per tick (latent frame) of the decoder."""
        return math.prod(self.decoder_rates)

    @property
    def frame_size(self) -> int:
        """Samples per coarse frame (one code of level 0)."""
        return self.hop_length * self.vq_strides[0]

    @property
    def pad_multiple(self) -> int:
        """``encode`` pads audio to a multiple of this many samples."""
        return self.hop_length * math.lcm(self.vq_strides[0], self.attn_window_size or 1)

    @property
    def codes_per_frame(self) -> int:
        """Codes (all levels) per coarse frame."""
        return sum(self.vq_strides[0] // s for s in self.vq_strides)

    @property
    def latent_rate(self) -> float:
        """Ticks (latent frames) per second."""
        return self.sample_rate / self.hop_length

    @property
    def frame_rates(self) -> list[float]:
        """Codes per second of each level, coarse first."""
        return [self.latent_rate / s for s in self.vq_strides]

    @property
    def bits_per_code(self) -> float:
        return math.log2(self.codebook_size)

    @property
    def bitrate(self) -> float:
        """Nominal bits per second (entropy-free: log2(codebook_size) bits per code)."""
        return sum(self.frame_rates) * self.bits_per_code

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def fingerprint(self) -> bytes:
        """8 bytes identifying config and weights; fixed when first asked (or at load time),
        so it survives ``.double()`` and weight-norm folding."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = h.digest()[:8]
        return self._fingerprint

    def describe(self) -> dict:
        """Numbers a user picks a codec by (rates in Hz, bitrate in bits/s)."""
        return {
            "sample_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "vq_strides": list(self.vq_strides),
            "frame_rates_hz": self.frame_rates,
            "codes_per_coarse_frame": self.codes_per_frame,
            "coarse_frame_samples": self.frame_size,
            "coarse_frame_ms": 1000 * self.frame_size / self.sample_rate,
            "codebook_size": self.codebook_size,
            "bitrate_bps": self.bitrate,
            "attn_window_size": self.attn_window_size,
            "parameters": sum(p.numel() for p in self.parameters()),
        }

    # ------------------------------------------------------------------ codec
    def preprocess(self, audio: torch.Tensor) -> torch.Tensor:
        """Right-pad with zeros to a multiple of ``pad_multiple`` samples."""
        length = audio.shape[-1]
        right_pad = math.ceil(length / self.pad_multiple) * self.pad_multiple - length
        return nn.functional.pad(audio, (0, right_pad))

    def _noise(self, seed: int | Sequence[int] | None, batch: int) -> NoiseSource | None:
        return None if seed is None else NoiseSource(seed, batch_size=batch)

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor) -> list[torch.Tensor]:
        """``audio [B, 1, T]`` float -> codes per level, ``LongTensor [B, T_i]``."""
        audio = check_audio(audio, self)
        if audio.shape[-1] == 0:
            return [
                torch.zeros(audio.shape[0], 0, dtype=torch.long, device=audio.device) for _ in self.vq_strides
            ]
        z = self.encoder(self.preprocess(audio))
        _, codes = self.quantizer(z)
        return codes

    @torch.inference_mode()
    def decode(self, codes: Sequence[torch.Tensor], seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Codes per level ``[B, T_i]`` -> audio ``[B, 1, n_ticks * decoder_hop]``.

        ``n_ticks = min_i T_i * stride_i``; the levels must agree (``T_i = ceil(n_ticks /
        stride_i)``), which whole coarse frames always do. ``seed`` (an int, or one per batch
        item) makes the decoder noise reproducible and independent of batch composition;
        ``None`` draws fresh noise like the reference.
        """
        codes, n_ticks = check_codes(codes, self)
        batch = codes[0].shape[0]
        if n_ticks == 0:
            return torch.zeros(batch, 1, 0, dtype=self.dtype, device=self.device)
        z_q = self.quantizer.from_codes(codes, n_ticks)
        return self.decoder(z_q, self._noise(seed, batch))

    @torch.inference_mode()
    def forward(
        self, audio: torch.Tensor, seed: int | Sequence[int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode and decode: (``audio_hat [B, 1, T]`` trimmed to the input length, codes)."""
        audio = check_audio(audio, self)
        length = audio.shape[-1]
        if length == 0:
            return audio.clone(), self.encode(audio)
        z = self.encoder(self.preprocess(audio))
        z_q, codes = self.quantizer(z)
        audio_hat = self.decoder(z_q, self._noise(seed, audio.shape[0]))
        return audio_hat[..., :length], codes

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_config(cls, config_path: str) -> SNAC:
        from .checkpoint import read_config

        return cls(**read_config(config_path))

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str, **kwargs) -> SNAC:
        """Load a local directory (``config.json`` + ``pytorch_model.bin`` or
        ``model.safetensors``) or a Hugging Face hub id. See :func:`snac_model.checkpoint.load_pretrained`."""
        from .checkpoint import load_pretrained

        return load_pretrained(repo_id_or_dir, cls=cls, **kwargs)

    def save_pretrained(self, directory: str, safetensors: bool = False) -> None:
        from .checkpoint import save_pretrained

        save_pretrained(self, directory, safetensors=safetensors)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; new weights invalidate the cached :meth:`fingerprint`."""
        self._fingerprint = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def fold_weight_norm(self) -> SNAC:
        """Inference fast path: replace every weight-norm parametrization by its plain weight
        (in place; outputs unchanged to float rounding). Returns ``self``."""
        from torch.nn.utils import parametrize

        self.fingerprint()
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self

    @property
    def weight_norm_folded(self) -> bool:
        from torch.nn.utils import parametrize

        return not any(parametrize.is_parametrized(m, "weight") for m in self.modules())
