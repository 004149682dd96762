"""S3FD (Zhang et al. 2017), the single-shot face detector, in the key layout of `sfd_face.pth`, the
weights syncnet_python's pipeline uses (`vgg`, `L2Norm3_3/4_3/5_3`, `extras`, `loc`, `conf`), with
its prior boxes, box decoding, non-maximum suppression and loader.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from klear_lightning.safe_pickle import load_torch_file

MIN_SIZES = (16, 32, 64, 128, 256, 512)


STEPS = (4, 8, 16, 32, 64, 128)


VARIANCE = (0.1, 0.2)


class L2Norm(nn.Module):
    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight[None, :, None, None] * x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)


def _vgg() -> nn.ModuleList:
    layers: list[nn.Module] = []
    c = 3
    for widths, ceil in (
        ((64, 64), False),
        ((128, 128), False),
        ((256,) * 3, True),
        ((512,) * 3, False),
        ((512,) * 3, False),
    ):
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 1, padding=1), nn.ReLU()]
            c = w
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil))
    layers += [nn.Conv2d(512, 1024, 3, 1, padding=6, dilation=6), nn.ReLU(), nn.Conv2d(1024, 1024, 1, 1), nn.ReLU()]
    return nn.ModuleList(layers)


class S3FD(nn.Module):
    """Single-shot scale-invariant face detector; `forward` gives per-prior (loc, face score)."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = _vgg()
        self.L2Norm3_3 = L2Norm(256, 10.0)
        self.L2Norm4_3 = L2Norm(512, 8.0)
        self.L2Norm5_3 = L2Norm(512, 5.0)
        self.extras = nn.ModuleList(
            [
                nn.Conv2d(1024, 256, 1, 1),
                nn.Conv2d(256, 512, 3, 2, padding=1),
                nn.Conv2d(512, 128, 1, 1),
                nn.Conv2d(128, 256, 3, 2, padding=1),
            ]
        )
        chans = (256, 512, 512, 1024, 512, 256)
        self.loc = nn.ModuleList(nn.Conv2d(c, 4, 3, 1, padding=1) for c in chans)
        self.conf = nn.ModuleList(nn.Conv2d(c, 4 if i == 0 else 2, 3, 1, padding=1) for i, c in enumerate(chans))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """x (B, 3, H, W) RGB minus `RGB_MEAN` -> loc (B, P, 4), face prob (B, P), feature map sizes."""
        sources = []
        norms = {16: self.L2Norm3_3, 23: self.L2Norm4_3, 30: self.L2Norm5_3}
        for k, layer in enumerate(self.vgg):
            if k in norms:
                sources.append(norms[k](x))
            x = layer(x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x))
            if k % 2 == 1:
                sources.append(x)
        locs, confs = [], []
        for i, src in enumerate(sources):
            conf = self.conf[i](src)
            if i == 0:  # max-out background: three background scores, one face score
                conf = torch.cat([conf[:, :3].amax(1, keepdim=True), conf[:, 3:]], dim=1)
            locs.append(self.loc[i](src).permute(0, 2, 3, 1).flatten(1, 2))
            confs.append(conf.permute(0, 2, 3, 1).flatten(1, 2))
        sizes = [tuple(s.shape[-2:]) for s in sources]
        return torch.cat(locs, 1), torch.cat(confs, 1).softmax(-1)[..., 1], sizes  # type: ignore[return-value]


def priors(image_hw: tuple[int, int], sizes: list[tuple[int, int]]) -> Tensor:
    """Prior boxes (P, 4) as (cx, cy, w, h), normalised to the image, in S3FD's order."""
    h, w = image_hw
    out = []
    for (fh, fw), step, min_size in zip(sizes, STEPS, MIN_SIZES):
        ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
        cx = (xs.flatten() + 0.5) * step / w
        cy = (ys.flatten() + 0.5) * step / h
        out.append(torch.stack([cx, cy, torch.full_like(cx, min_size / w), torch.full_like(cy, min_size / h)], -1))
    return torch.cat(out).float()


def decode(loc: Tensor, prior: Tensor) -> Tensor:
    """SSD box decoding -> (P, 4) corners (x0, y0, x1, y1), normalised."""
    centre = prior[:, :2] + loc[:, :2] * VARIANCE[0] * prior[:, 2:]
    size = prior[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Greedy non-maximum suppression; indices kept, best first."""
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return torch.tensor(keep, dtype=torch.long)


def load_s3fd(path: str | Path) -> S3FD:
    """Load `sfd_face.pth` (a plain state dict) strictly, through the allow-list reader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"S3FD checkpoint not found: {path}")
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not an S3FD state dict (found {type(state).__name__})")
    net = S3FD()
    net.load_state_dict(state, strict=True)
    return net.eval()
