"""Model configuration: one dataclass, validated on construction, with named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from klear_lightning.errors import ConfigError

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

    In a training config this is the `model.net` block; `video_channels`, `audio_channels`,
    `text_dim`, `video_latent_fps` and `audio_latent_fps` are linked there from the data module.

    Args:
        architecture: `single_tower` (KLEAR's MM-DiT) or `dual_tower` (the two-tower baseline).
        dim: token width of every stream.
        depth: joint blocks (of each tower for the dual tower).
        heads: attention heads; the head dim dim / heads must be even.
        mlp_ratio: MLP hidden width as a multiple of dim.
        text_dim: caption embedding width (from the text encoder).
        video_channels: video latent channels (from the video codec).
        audio_channels: audio latent channels (from the audio codec).
        video_patch: video latents are cut into video_patch x video_patch spatial patches per token.
        audio_patch: audio latent frames per token.
        share_text_weights: the two text streams share one set of block weights.
        rope_mode: MixD-RoPE audio positions: `offset` (the paper: after the sample's last video
            frame) or `aligned` (the audio token's time in video latent frames).
        text_rope: rotate text tokens by their index (1D) instead of not at all.
        rope_theta: RoPE base frequency.
        rope_time_scale: multiplies the temporal rotary coordinate of video and audio (models/rope.py).
        rope_sections: head dim split into (t, h, w) rotary sections; None uses
            `default_rope_sections(dim // heads)`.
        attention_backend: `reference` (dense SDPA), `packed` (CPU default), `flash`, `flex` or
            `xformers` (CUDA).
        video_latent_fps: video latent frames per second (from the data; aligned RoPE uses it).
        audio_latent_fps: audio latent frames per second (from the data; aligned RoPE uses it).
        time_freq_dim: sinusoidal features of the timestep embedding (even).
        norm_eps: epsilon of the layer and QK norms.
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
        for name in (
            "dim",
            "depth",
            "heads",
            "text_dim",
            "video_channels",
            "audio_channels",
            "video_patch",
            "audio_patch",
            "time_freq_dim",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.net.{name}: must be > 0, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ConfigError(f"model.net.dim: {self.dim} is not divisible by model.net.heads = {self.heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model.net.heads: the head dim dim / heads = {self.head_dim} must be even for RoPE")
        if self.attention_backend == "flex" and self.head_dim < 16:
            raise ConfigError(f"model.net.attention_backend: 'flex' needs a head dim >= 16, got {self.head_dim}")
        if self.time_freq_dim % 2:
            raise ConfigError(f"model.net.time_freq_dim: must be even, got {self.time_freq_dim}")
        if self.mlp_ratio <= 0 or int(self.dim * self.mlp_ratio) <= 0:
            raise ConfigError(f"model.net.mlp_ratio: must be > 0, got {self.mlp_ratio}")
        if self.rope_theta <= 0:
            raise ConfigError(f"model.net.rope_theta: must be > 0, got {self.rope_theta}")
        if self.rope_time_scale <= 0:
            raise ConfigError(f"model.net.rope_time_scale: must be > 0, got {self.rope_time_scale}")
        if not (self.video_latent_fps > 0 and self.audio_latent_fps > 0):
            raise ConfigError(
                f"model.net.video_latent_fps: {self.video_latent_fps} and model.net.audio_latent_fps "
                f"{self.audio_latent_fps} must be > 0 (aligned RoPE uses their ratio)"
            )
        if self.rope_sections is not None:
            self.rope_sections = tuple(int(s) for s in self.rope_sections)  # type: ignore[assignment]
            if len(self.rope_sections) != 3 or sum(self.rope_sections) != self.head_dim:
                raise ConfigError(
                    f"model.net.rope_sections: {self.rope_sections} must be three (t, h, w) sizes "
                    f"summing to the head dim {self.head_dim}"
                )
            if any(s < 0 or s % 2 for s in self.rope_sections):
                raise ConfigError(f"model.net.rope_sections: {self.rope_sections}: each must be even and >= 0")

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
        raise ConfigError(f"model.net.{field_name}: {value!r} is not one of {list(allowed)}")


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=64, depth=2, heads=4, text_dim=384, video_channels=16, audio_channels=16),
    "small": ModelConfig(
        dim=512, depth=4, heads=8, text_dim=384, video_channels=16, audio_channels=16, video_patch=2, audio_patch=1
    ),
    "paper": ModelConfig(
        dim=3328,
        depth=32,
        heads=26,
        text_dim=3584,
        video_channels=16,
        audio_channels=64,
        video_patch=2,
        audio_patch=1,
        video_latent_fps=3.0,
        audio_latent_fps=44100 / 1024,
    ),
}
