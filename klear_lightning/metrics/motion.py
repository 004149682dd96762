"""Motion score: mean optical-flow magnitude between consecutive frames.

- `motion_raft_versebench` (the paper's MS; Verse-Bench's `raft_inferencer.py` with
  `evaluate_raft_video`): RAFT (large, `raft-things.pth`, see `metrics.nets.raft`) on every pair of
  consecutive frames at the clip's own frame rate. Each frame is halved (both sides, bilinear, back
  to 8-bit) until neither side exceeds 640 px, then padded to multiples of 8 by edge replication
  (split evenly, as its `InputPadder`); 20 refinements; the pair's score is the mean absolute flow
  component (x and y, in pixels, over the padded frame); a clip's score is the mean over its pairs,
  then the mean over clips. Verse-Bench's `calculate_metrics.py` loads RAFT but does not call this
  function, so this is its code's reading of MS, not a number it prints.
- `motion_hs256` (no weights; a named alternative): Horn-Schunck in torch. Frames are converted to
  grey, resized so the short side is `size` pixels (256 by default, so the score is comparable across
  resolutions) and flow is estimated coarse-to-fine (a pyramid of halvings, warping the second frame
  by the upsampled flow at each level). The score is the mean magnitude in pixels per frame at that
  working resolution, averaged over frame pairs, then clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric
from klear_lightning.metrics.nets.raft import RAFT, load_raft

VERSEBENCH_MAX_SIDE = 640
VERSEBENCH_ITERS = 20

_AVG = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
_DX = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) / 4
_DY = torch.tensor([[-1.0, -1.0], [1.0, 1.0]]) / 4


def _conv(x: Tensor, kernel: Tensor) -> Tensor:
    k = kernel.to(x)[None, None]
    pad = [(k.shape[-1] - 1) // 2, k.shape[-1] // 2, (k.shape[-2] - 1) // 2, k.shape[-2] // 2]
    return F.conv2d(F.pad(x, pad, mode="replicate"), k)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample `image` (N, 1, H, W) at x + flow; flow (N, 2, H, W) in pixels (u right, v down)."""
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=image.dtype), torch.arange(w, dtype=image.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * 2 / max(w - 1, 1) - 1
    gy = (ys + flow[:, 1]) * 2 / max(h - 1, 1) - 1
    return F.grid_sample(image, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=True)


def horn_schunck(first: Tensor, second: Tensor, flow: Tensor, alpha: float, iterations: int) -> Tensor:
    """Refine `flow` (N, 2, H, W) between grey images (N, 1, H, W) in [0, 1] (Horn & Schunck 1981)."""
    warped = warp(second, flow)
    ix = _conv(first, _DX) + _conv(warped, _DX)
    iy = _conv(first, _DY) + _conv(warped, _DY)
    it = _conv(warped - first, torch.full((2, 2), 0.25))
    du = torch.zeros_like(first)
    dv = torch.zeros_like(first)
    denom = alpha**2 + ix**2 + iy**2
    for _ in range(iterations):
        ub = _conv(flow[:, :1] + du, _AVG) - flow[:, :1]
        vb = _conv(flow[:, 1:] + dv, _AVG) - flow[:, 1:]
        step = (ix * ub + iy * vb + it) / denom
        du, dv = ub - ix * step, vb - iy * step
    return flow + torch.cat([du, dv], dim=1)


def optical_flow(first: Tensor, second: Tensor, levels: int = 3, alpha: float = 0.05, iterations: int = 50) -> Tensor:
    """Coarse-to-fine Horn-Schunck flow (N, 2, H, W) in pixels from grey (N, 1, H, W) in [0, 1]."""
    pyramid = [(first, second)]
    for _ in range(levels - 1):
        a, b = pyramid[-1]
        if min(a.shape[-2:]) < 16:
            break
        pyramid.append((F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)))
    flow = torch.zeros(first.shape[0], 2, *pyramid[-1][0].shape[-2:], dtype=first.dtype)
    for a, b in reversed(pyramid):
        if flow.shape[-2:] != a.shape[-2:]:
            scale = torch.tensor([a.shape[-1] / flow.shape[-1], a.shape[-2] / flow.shape[-2]])
            flow = F.interpolate(flow, size=a.shape[-2:], mode="bilinear", align_corners=False)
            flow = flow * scale.to(flow)[None, :, None, None]
        flow = horn_schunck(a, b, flow, alpha, iterations)
    return flow


def grey_frames(video: Tensor, size: int) -> Tensor:
    """uint8 (T, H, W, 3) -> grey float (T, 1, h, w) in [0, 1] with short side `size`."""
    x = rearrange(video.float() / 255.0, "t h w c -> t c h w")
    grey = (x * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
    h, w = grey.shape[-2:]
    scale = size / min(h, w)
    if scale != 1.0:
        grey = F.interpolate(
            grey, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False, antialias=scale < 1
        )
    return grey


def motion_magnitude(video: Tensor, size: int = 256, batch: int = 8) -> float:
    """Mean flow magnitude (px / frame at short side `size`) over consecutive frame pairs."""
    if video.shape[0] < 2:
        raise ValueError(f"motion score needs at least 2 frames, got {video.shape[0]}")
    grey = grey_frames(video, size)
    total = 0.0
    for s in range(0, grey.shape[0] - 1, batch):
        a = grey[s : s + batch]
        b = grey[s + 1 : s + 1 + batch][: a.shape[0]]
        a = a[: b.shape[0]]
        total += float(optical_flow(a, b).norm(dim=1).mean((1, 2)).sum())
    return total / (grey.shape[0] - 1)


class MotionScore(ClipMetric):
    modalities = ("video",)
    columns = (Column("motion_hs256", "Motion", higher_is_better=True),)
    protocol = (
        "Horn-Schunck optical flow (3-level pyramid, alpha 0.05, 50 iterations) on grey "
        "frames, short side 256; mean magnitude in px per frame over consecutive pairs"
    )

    def __init__(self, size: int = 256) -> None:
        super().__init__()
        self.size = size
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            assert clip.video is not None
            self.total += motion_magnitude(clip.video, self.size)
            self.n += 1

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clips scored")
        return self.total / self.n


@register_metric("motion_hs256", group="video", description="mean Horn-Schunck flow magnitude")
def build_motion(ctx: BuildContext) -> ClipMetric:
    return MotionScore()


def versebench_resize(video: Tensor) -> Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, h, w) in 0-255: both sides halved (integer division)
    until neither exceeds 640, bilinear, rounded back to 8-bit (as its cv2.resize on uint8)."""
    x = rearrange(video, "t h w c -> t c h w").float()
    h, w = x.shape[-2:]
    th, tw = h, w
    while th > VERSEBENCH_MAX_SIDE or tw > VERSEBENCH_MAX_SIDE:
        th, tw = th // 2, tw // 2
    if (th, tw) != (h, w):
        x = torch.floor(F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False) + 0.5)
    return x


def pad_to_eight(x: Tensor) -> Tensor:
    """RAFT's InputPadder ('sintel'): pad (N, C, H, W) to multiples of 8, edges replicated, split evenly."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate")


@torch.no_grad()
def raft_flows(net: RAFT, frames: Tensor, iters: int, batch: int = 4) -> Tensor:
    """frames (T, 3, h, w) in 0-255 -> flows (T - 1, 2, H, W) of consecutive pairs on the padded frames."""
    device = next(net.parameters()).device
    padded = pad_to_eight(frames)
    flows = []
    for s in range(0, padded.shape[0] - 1, batch):
        a = padded[s : min(s + batch, padded.shape[0] - 1)].to(device)
        b = padded[s + 1 : s + 1 + a.shape[0]].to(device)
        flows.append(net(a, b, iters).cpu())
    return torch.cat(flows)


def raft_pair_scores(flows: Tensor) -> Tensor:
    """(P, 2, H, W) flows -> (P,) mean absolute flow component per pair (Verse-Bench's pair score)."""
    return flows.abs().mean((1, 2, 3))


class MotionRaftVerseBench(ClipMetric):
    modalities = ("video",)
    columns = (Column("motion_raft_versebench", "MS", higher_is_better=True),)
    protocol = (
        "Verse-Bench MS (its raft_inferencer): RAFT raft-things, 20 iterations, every consecutive frame "
        "pair at the clip's frame rate, frames halved until <= 640 px, padded to multiples of 8; mean "
        "|flow| component in px per pair, mean over pairs, then clips"
    )

    def __init__(self, net: RAFT) -> None:
        super().__init__()
        self.net = net
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            assert clip.video is not None
            if clip.video.shape[0] < 2:
                raise ValueError(f"{self.name}: clip {clip.meta.get('key', '?')} has fewer than 2 frames")
            flows = raft_flows(self.net, versebench_resize(clip.video), VERSEBENCH_ITERS)
            self.total += float(raft_pair_scores(flows).mean())
            self.n += 1

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clips scored")
        return self.total / self.n


@register_metric("motion_raft_versebench", group="video", description="Verse-Bench MS: mean |RAFT flow|")
def build_motion_raft(ctx: BuildContext) -> ClipMetric:
    return MotionRaftVerseBench(
        ctx.load("raft", "the RAFT weights (raft-things.pth)", lambda path: load_raft(path).to(ctx.device))
    )
