"""MixD-RoPE: per-stream (t, h, w) position ids from stream shapes, and the rotary embedding.

Every token gets three coordinates, one per head-dim section (t, h, w):
- video patch (t, h, w): its grid indices;
- audio token i, mode ``offset`` (paper): p = T_b + i in all three sections, where T_b is the
  sample's OWN last valid video latent frame + 1, never the batch's padded length, so a sample's
  positions do not depend on what it is batched with; 0 when the sample has no video or its
  audio cannot see it (isolated modalities), so the isolated audio prediction is the T2A one;
- audio token i, mode ``aligned``: t = the token's start time in video-latent frames
  (i * audio_patch * video_latent_fps / audio_latent_fps, fractional), h = w = -1, a fixed
  spatial position outside every video grid;
- text token j: 0 in every section (no rotation), or j in every section when ``text_rope``.
``time_scale`` multiplies every temporal coordinate: the t of video tokens and of aligned audio
tokens, and the offset audio id p, which is a time in all three sections (so an offset audio token
keeps one id in all sections). The highest temporal rotary frequency is 1 rad per position, so at 1
a query tells frames 1 apart only by cos(1) = 0.54, while at 3 one frame turns the fastest pair by
3 rad (cos = -0.99), sharpening same-instant attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor

AUDIO_SPATIAL_POSITION = -1.0


@dataclass(frozen=True)
class StreamShapes:
    """Token-grid shapes of one batch: the padded video grid (T, H, W) in patches, token counts of the rest."""

    video_grid: tuple[int, int, int]
    audio_tokens: int
    video_text_tokens: int
    audio_text_tokens: int


def video_lengths(video_mask: Tensor) -> Tensor:
    """(B,) long: each sample's last valid video latent frame + 1 (0 without video) from its (B, T) mask."""
    if video_mask.shape[1] == 0:
        return torch.zeros(video_mask.shape[0], dtype=torch.long, device=video_mask.device)
    frame = torch.arange(1, video_mask.shape[1] + 1, device=video_mask.device)
    return (video_mask.long() * frame).amax(1)


def stream_positions(
    shapes: StreamShapes,
    video_frames: Tensor,
    mode: str,
    video_latent_fps: float,
    audio_latent_fps: float,
    audio_patch: int,
    text_rope: bool,
    time_scale: float = 1.0,
) -> dict[str, Tensor]:
    """Position ids (B, L_s, 3) float32 per stream, in (t, h, w) order; video flattened t-major.

    `video_frames` (B,) is each sample's own video length (`video_lengths`); the offset audio ids
    start there. Streams whose positions are the same for every sample are expanded views.
    """
    device = video_frames.device
    b = video_frames.shape[0]
    t, h, w = shapes.video_grid
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, device=device) for n in (t, h, w)), indexing="ij"), dim=-1)
    video = rearrange(grid, "t h w c -> (t h w) c").float() * torch.tensor([time_scale, 1.0, 1.0], device=device)

    i = torch.arange(shapes.audio_tokens, dtype=torch.float64, device=device)
    if mode == "offset":
        p = (video_frames.double()[:, None] + i) * time_scale
        audio = repeat(p, "b n -> b n c", c=3)
    elif mode == "aligned":
        time = i * audio_patch * video_latent_fps / audio_latent_fps * time_scale
        space = torch.full_like(time, AUDIO_SPATIAL_POSITION)
        audio = torch.stack([time, space, space], dim=-1)[None].expand(b, -1, -1)
    else:
        raise ValueError(f"rope_mode = {mode!r} is not one of ['offset', 'aligned']")

    def text(n: int) -> Tensor:
        j = torch.arange(n, dtype=torch.float32, device=device) if text_rope else torch.zeros(n, device=device)
        return j[None, :, None].expand(b, -1, 3)

    return {
        "video": video[None].expand(b, -1, -1),
        "video_text": text(shapes.video_text_tokens),
        "audio_text": text(shapes.audio_text_tokens),
        "audio": audio.float(),
    }


def rope_angles(positions: Tensor, sections: tuple[int, int, int], theta: float) -> Tensor:
    """Rotation angles (N, head_dim / 2): section k's pairs rotate with positions[:, k]."""
    parts = []
    for k, size in enumerate(sections):
        if size == 0:
            continue
        inv_freq = theta ** (-torch.arange(0, size, 2, dtype=torch.float64, device=positions.device) / size)
        parts.append(positions[:, k, None].double() * inv_freq)
    return torch.cat(parts, dim=-1).float()


def rope_table(angles: Tensor, device: torch.device) -> Tensor:
    """Unit complex rotations e^{i angle} (N, 1, head_dim / 2), complex64."""
    angles = angles.to(device)
    return torch.polar(torch.ones_like(angles), angles)[:, None, :]


def apply_rope(x: Tensor, rotation: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (..., N, H, D) by rotation (N, 1, D / 2), as complex numbers, in float32."""
    pairs = torch.view_as_complex(rearrange(x.float(), "... (d two) -> ... d two", two=2).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)
