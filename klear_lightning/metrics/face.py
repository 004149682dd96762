"""Face boxes for lip-sync scoring: from SyncWorld annotations, or an S3FD detector for real video.

S3FD (Zhang et al. 2017) is implemented here in the key layout of `sfd_face.pth`, the weights
syncnet_python's pipeline uses (`vgg`, `L2Norm3_3/4_3/5_3`, `extras`, `loc`, `conf`); its official
code on the same seeded weights gives the same per-prior outputs (`benchmarks/parity/s3fd.py`). A face
track is the best detection per frame (`track`, syncnet_python's pipeline) or one face followed from frame
to frame by overlap (`tracks`, every face of the clip, as `klear curate` counts speakers); it is usable when at most `max_missing` of the frames lack
a face (gaps are filled from the nearest detection) and the face is at least `min_size` pixels;
centre and size are median-filtered over 13 frames (syncnet_python's smoothing, with edges
replicated instead of zero-padded) and the box made square.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from klear_lightning.data.syncworld.measure import scaled_box
from klear_lightning.metrics.nets.s3fd import S3FD, decode, nms, priors

RGB_MEAN = (123.0, 117.0, 104.0)
MIN_INPUT_SIDE = 64  # S3FD's deepest layers need a 32 px input; small videos are scaled up to this


def median_filter(x: Tensor, kernel: int) -> Tensor:
    """Running median over time of (T, C) values, edges replicated (odd kernel)."""
    half = kernel // 2
    padded = torch.cat([x[:1].expand(half, -1), x, x[-1:].expand(half, -1)])
    return padded.unfold(0, kernel, 1).median(-1).values


@dataclass
class FaceDetector:
    """Best face box per frame with S3FD (syncnet_python settings: scale 0.25, threshold 0.9; a video
    whose short side would fall below MIN_INPUT_SIDE is scaled to that instead)."""

    net: S3FD
    scale: float = 0.25
    threshold: float = 0.9
    batch: int = 16

    @torch.no_grad()
    def detect_all(self, frames: Tensor) -> list[Tensor]:
        """uint8 (T, H, W, 3) RGB -> per frame every face above the threshold, (n, 4) boxes
        (x0, y0, x1, y1) in pixels after non-maximum suppression, best first."""
        h, w = frames.shape[1:3]
        scale = max(self.scale, MIN_INPUT_SIDE / min(h, w))
        device = next(self.net.parameters()).device
        found: list[Tensor] = []
        for s in range(0, frames.shape[0], self.batch):
            x = frames[s : s + self.batch].permute(0, 3, 1, 2).float()
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            x = x - torch.tensor(RGB_MEAN)[None, :, None, None]
            loc, score, sizes = self.net(x.to(device))
            prior = priors((x.shape[-2], x.shape[-1]), sizes)
            for loc_i, score_i in zip(loc.cpu(), score.cpu()):
                hit = score_i > self.threshold
                if not hit.any():
                    found.append(torch.zeros(0, 4))
                    continue
                boxes = decode(loc_i[hit], prior[hit])
                keep = nms(boxes, score_i[hit], 0.3)
                found.append(boxes[keep] * torch.tensor([w, h, w, h], dtype=boxes.dtype))
        return found

    def detect(self, frames: Tensor) -> list[Tensor | None]:
        """uint8 (T, H, W, 3) RGB -> per frame the best (x0, y0, x1, y1) in pixels, or None."""
        return [boxes[0] if len(boxes) else None for boxes in self.detect_all(frames)]

    def track(self, frames: Tensor, max_missing: float = 0.1, min_size: float = 16.0) -> Tensor | None:
        """The best face's track (T, 4): gaps filled from the nearest detection, centre and size
        median-filtered over 13 frames (as syncnet_python crops); None when no usable track."""
        return smooth_track(self.detect(frames), max_missing, min_size)

    def tracks(
        self, frames: Tensor, max_missing: float = 0.1, min_size: float = 16.0, min_iou: float = 0.3
    ) -> list[Tensor]:
        """Every face's track (T, 4), as `track` smooths it: each frame's faces extend the track whose
        last box they overlap most (IoU > `min_iou`), the others start a track of their own; tracks
        missing more than `max_missing` of the frames are dropped."""
        chains: list[list[Tensor | None]] = []
        for t, boxes in enumerate(self.detect_all(frames)):
            free = list(range(len(boxes)))
            for chain in chains:
                last = next(b for b in reversed(chain) if b is not None)
                overlaps = [(box_iou(last, boxes[j]), j) for j in free]
                best = max(overlaps, default=(0.0, -1))
                if best[0] > min_iou:
                    chain.append(boxes[best[1]])
                    free.remove(best[1])
                else:
                    chain.append(None)
            chains += [[None] * t + [boxes[j]] for j in free]
        return [track for chain in chains if (track := smooth_track(chain, max_missing, min_size)) is not None]


def box_iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    inter = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return float(inter / union) if union > 0 else 0.0


def smooth_track(found: list[Tensor | None], max_missing: float, min_size: float) -> Tensor | None:
    """Per-frame boxes or None -> (T, 4) square boxes: gaps filled from the nearest detection, centre
    and size median-filtered over 13 frames; None when more than `max_missing` of the frames lack a
    box or the face is smaller than `min_size` pixels."""
    have = [i for i, d in enumerate(found) if d is not None]
    if not have or 1.0 - len(have) / len(found) > max_missing:
        return None
    boxes = torch.stack([found[min(have, key=lambda j: abs(j - i))] for i in range(len(found))])  # type: ignore[misc]
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).amax(1) / 2
    if 2 * half.mean() < min_size:
        return None
    smooth = median_filter(torch.cat([centre, half[:, None]], 1), 13)
    centre, half = smooth[:, :2], smooth[:, 2:]
    return torch.cat([centre - half, centre + half], dim=1)


def annotation_boxes(meta: dict, frames: Tensor) -> list[Tensor]:
    """SyncWorld face boxes from `meta['annotation']['faces']` ([y0, x0, y1, x1], static per clip,
    drawn at `annotation['frame_size']`) as per-frame (T, 4) tracks in (x0, y0, x1, y1) pixels of
    `frames` (T, H, W, 3), so a clip the DataModule resized keeps its face; empty without a face."""
    found = meta.get("annotation") or {}
    tracks = []
    for face in found.get("faces") or []:
        y0, x0, y1, x1 = scaled_box(face["box"], found.get("frame_size"), frames.cpu().numpy())
        tracks.append(torch.tensor([x0, y0, x1, y1], dtype=torch.float32).expand(frames.shape[0], 4).clone())
    return tracks
