"""Face boxes for lip-sync scoring: from SyncWorld annotations, or an S3FD detector for real video.

S3FD (Zhang et al. 2017) is implemented here in the key layout of `sfd_face.pth`, the weights
syncnet_python's pipeline uses (`vgg`, `L2Norm3_3/4_3/5_3`, `extras`, `loc`, `conf`); its official
code on the same seeded weights gives the same per-prior outputs (`benchmarks/parity/s3fd.py`). A face
track is the best detection per frame; it is usable when at most `max_missing` of the frames lack
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


def median_filter(x: Tensor, kernel: int) -> Tensor:
    """Running median over time of (T, C) values, edges replicated (odd kernel)."""
    half = kernel // 2
    padded = torch.cat([x[:1].expand(half, -1), x, x[-1:].expand(half, -1)])
    return padded.unfold(0, kernel, 1).median(-1).values


@dataclass
class FaceDetector:
    """Best face box per frame with S3FD (syncnet_python settings: scale 0.25, threshold 0.9)."""

    net: S3FD
    scale: float = 0.25
    threshold: float = 0.9
    batch: int = 16

    @torch.no_grad()
    def detect(self, frames: Tensor) -> list[Tensor | None]:
        """uint8 (T, H, W, 3) RGB -> per frame the best (x0, y0, x1, y1) in pixels, or None."""
        h, w = frames.shape[1:3]
        device = next(self.net.parameters()).device
        found: list[Tensor | None] = []
        for s in range(0, frames.shape[0], self.batch):
            x = frames[s : s + self.batch].permute(0, 3, 1, 2).float()
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
            x = x - torch.tensor(RGB_MEAN)[None, :, None, None]
            loc, score, sizes = self.net(x.to(device))
            prior = priors((x.shape[-2], x.shape[-1]), sizes)
            for loc_i, score_i in zip(loc.cpu(), score.cpu()):
                hit = score_i > self.threshold
                if not hit.any():
                    found.append(None)
                    continue
                boxes = decode(loc_i[hit], prior[hit])
                best = nms(boxes, score_i[hit], 0.3)[0]
                found.append(boxes[best] * torch.tensor([w, h, w, h], dtype=boxes.dtype))
        return found

    def track(self, frames: Tensor, max_missing: float = 0.1, min_size: float = 16.0) -> Tensor | None:
        """Per-frame boxes (T, 4): gaps filled from the nearest detection, centre and size
        median-filtered over 13 frames (as syncnet_python crops); None when no usable track."""
        found = self.detect(frames)
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
