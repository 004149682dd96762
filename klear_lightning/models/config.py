"""Model configuration: one dataclass, validated on construction, with named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

ARCHITECTURES = ("single_tower", "dual_tower")
ROPE_MODES = ("offset", "aligned")
ATTENTION_BACKENDS = ("reference", "packed", "flash", "flex", "xformers")


def default_rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dim into (t, h, w) rotary sections: h = w = 2 * (head_dim // 6), t the rest."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@dataclass
class ModelConfig:
    """Architecture of the denoiser (single-tower MM-DiT or the dual-tower baseline).

    Presets (`ModelConfig.preset(name, **overrides)`):
    - ``tiny``: CPU demo, width 64, 2 blocks, about 0.75M parameters (text_dim 384, 16 channels).
    - ``small``: benchmarks, width 512, 8 heads of 64, 4 blocks.
    - ``paper``: 32 joint blocks, about 26B parameters. Width derivation: one block holds, per
      stream, QKV + output projection (4 d^2), an MLP of ratio 4 (8 d^2) and an adaLN-Zero
      projection to six modulation vectors (6 d^2), i.e. 18 d^2 per stream. With four streams
      (text weights not shared) and 32 blocks: 4 * 32 * 18 d^2 = 2304 d^2 = 26e9 gives
      d = 3359; rounded to a multiple of the head dim 128, d = 3328 (26 heads). In the last
      block the two text streams only give keys and values (adaLN shift / scale and K, V:
      4 d^2 instead of 18 d^2), so the blocks hold 2276 d^2 = 25.2e9, plus about 0.13e9 in
      embeddings and final layers (25.3B total).

    video_channels / audio_channels / text_dim are decided by the codecs and text encoder and
    are overridden from them. rope_sections=None uses `default_rope_sections(dim // heads)`.
    rope_time_scale multiplies the temporal rotary coordinate of video and audio (models/rope.py).
    """

    architecture: str = "single_tower"
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    video_channels: int = 16
    audio_channels: int = 16
    video_patch: int = 1
    audio_patch: int = 1
    share_text_weights: bool = False
    rope_mode: str = "offset"
    text_rope: bool = False
    rope_theta: float = 10000.0
    rope_time_scale: float = 1.0
    rope_sections: tuple[int, int, int] | None = None
    attention_backend: str = "packed"
    video_latent_fps: float = 4.0
    audio_latent_fps: float = 16.0
    time_freq_dim: int = 256
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _choice("architecture", self.architecture, ARCHITECTURES)
        _choice("rope_mode", self.rope_mode, ROPE_MODES)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        for name in ("dim", "depth", "heads", "text_dim", "video_channels", "audio_channels",
                     "video_patch", "audio_patch", "time_freq_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"model.dim = {self.dim} is not divisible by model.heads = {self.heads}")
        if self.head_dim % 2:
            raise ValueError(f"model head dim = dim / heads = {self.head_dim} must be even for RoPE")
        if self.attention_backend == "flex" and self.head_dim < 16:
            raise ValueError(f"model.attention_backend = 'flex' needs a head dim >= 16, got {self.head_dim}")
        if self.time_freq_dim % 2:
            raise ValueError(f"model.time_freq_dim = {self.time_freq_dim} must be even")
        if self.mlp_ratio <= 0 or int(self.dim * self.mlp_ratio) <= 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.rope_theta <= 0:
            raise ValueError(f"model.rope_theta must be > 0, got {self.rope_theta}")
        if self.rope_time_scale <= 0:
            raise ValueError(f"model.rope_time_scale must be > 0, got {self.rope_time_scale}")
        if not (self.video_latent_fps > 0 and self.audio_latent_fps > 0):
            raise ValueError(
                f"model.video_latent_fps ({self.video_latent_fps}) and model.audio_latent_fps "
                f"({self.audio_latent_fps}) must be > 0 (aligned RoPE uses their ratio)"
            )
        if self.rope_sections is not None:
            self.rope_sections = tuple(int(s) for s in self.rope_sections)  # type: ignore[assignment]
            if len(self.rope_sections) != 3 or sum(self.rope_sections) != self.head_dim:
                raise ValueError(
                    f"model.rope_sections = {self.rope_sections} must be three (t, h, w) sizes "
                    f"summing to the head dim {self.head_dim}"
                )
            if any(s < 0 or s % 2 for s in self.rope_sections):
                raise ValueError(f"model.rope_sections = {self.rope_sections}: each must be even and >= 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def sections(self) -> tuple[int, int, int]:
        return self.rope_sections if self.rope_sections is not None else default_rope_sections(self.head_dim)

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
        base = PRESETS[name]
        unknown = set(overrides) - set(asdict(base))
        if unknown:
            raise ValueError(f"model preset {name!r}: unknown override fields {sorted(unknown)}")
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{field_name} = {value!r} is not one of {list(allowed)}")


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=64, depth=2, heads=4, text_dim=384, video_channels=16, audio_channels=16),
    "small": ModelConfig(dim=512, depth=4, heads=8, text_dim=384, video_channels=16, audio_channels=16,
                         video_patch=2, audio_patch=1),
    "paper": ModelConfig(dim=3328, depth=32, heads=26, text_dim=3584, video_channels=16,
                         audio_channels=64, video_patch=2, audio_patch=1, video_latent_fps=3.0,
                         audio_latent_fps=44100 / 1024),
}
