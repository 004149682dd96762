"""RAFT optical flow (Teed & Deng 2020), the network behind the paper's motion score.

Implemented here in the key layout of the official `raft-things.pth` (princeton-vl/RAFT, the file
Verse-Bench's `raft_inferencer.py` loads; saved from `DataParallel`, so keys carry `module.`):
`fnet` (feature encoder, instance norm), `cnet` (context encoder, batch norm), `update_block`
(motion encoder, separable ConvGRU, flow head, convex-upsampling mask). Only the large model.
The official code, run on the same seeded weights, gives the same flow (`benchmarks/parity/raft.py`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.safe_pickle import load_torch_file

CORR_LEVELS = 4
CORR_RADIUS = 4
HIDDEN = 128
CONTEXT = 128


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a norm after each; a strided 1x1 shortcut when downsampling. The
    shortcut's norm is registered twice (`norm3` and `downsample.1`), as in the official file."""

    def __init__(self, cin: int, cout: int, norm: str, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1, self.norm2 = _norm(norm, cout), _norm(norm, cout)
        self.downsample = None
        if stride != 1:
            self.norm3 = _norm(norm, cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.norm3)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.BatchNorm2d(channels)


class Encoder(nn.Module):
    """RAFT's BasicEncoder: (N, 3, H, W) in [-1, 1] -> (N, out, H / 8, W / 8)."""

    def __init__(self, out: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = _norm(norm, 64)
        widths, cin, layers = (64, 96, 128), 64, []
        for width, stride in zip(widths, (1, 2, 2)):
            layers.append(nn.Sequential(ResidualBlock(cin, width, norm, stride), ResidualBlock(width, width, norm, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(128, out, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class MotionEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], dim=1))), flow], dim=1)


class SepConvGRU(nn.Module):
    """A ConvGRU step along rows (1x5 kernels), then one along columns (5x1)."""

    def __init__(self, hidden: int, inp: int) -> None:
        super().__init__()
        for gate in ("z", "r", "q"):
            setattr(self, f"conv{gate}1", nn.Conv2d(hidden + inp, hidden, (1, 5), padding=(0, 2)))
            setattr(self, f"conv{gate}2", nn.Conv2d(hidden + inp, hidden, (5, 1), padding=(2, 0)))

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        for k in ("1", "2"):
            hx = torch.cat([h, x], dim=1)
            z = torch.sigmoid(getattr(self, f"convz{k}")(hx))
            r = torch.sigmoid(getattr(self, f"convr{k}")(hx))
            q = torch.tanh(getattr(self, f"convq{k}")(torch.cat([r * h, x], dim=1)))
            h = (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(HIDDEN, 256, 3, padding=1)
        self.conv2 = nn.Conv2d(256, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = MotionEncoder()
        self.gru = SepConvGRU(HIDDEN, 128 + HIDDEN)
        self.flow_head = FlowHead()
        self.mask = nn.Sequential(nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 64 * 9, 1))

    def forward(self, net: Tensor, inp: Tensor, corr: Tensor, flow: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], dim=1))
        return net, 0.25 * self.mask(net), self.flow_head(net)


def sample(img: Tensor, coords: Tensor) -> Tensor:
    """Bilinear lookup of img (N, C, H, W) at pixel coords (N, h, w, 2) as (x, y), zeros outside."""
    h, w = img.shape[-2:]
    x, y = coords.split(1, dim=-1)
    grid = torch.cat([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1)
    return F.grid_sample(img, grid, align_corners=True)


class CorrPyramid:
    """All-pairs correlation of two feature maps, average-pooled into `CORR_LEVELS` levels, looked up
    in a (2r+1)^2 window around each coordinate (RAFT's window: its first axis offsets x)."""

    def __init__(self, f1: Tensor, f2: Tensor) -> None:
        b, d, h, w = f1.shape
        corr = torch.einsum("bdi,bdj->bij", f1.flatten(2), f2.flatten(2)) / torch.sqrt(torch.tensor(d).float())
        corr = rearrange(corr, "b i (h w) -> (b i) 1 h w", h=h)
        self.levels = [corr]
        for _ in range(CORR_LEVELS - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.levels.append(corr)
        r = torch.linspace(-CORR_RADIUS, CORR_RADIUS, 2 * CORR_RADIUS + 1)
        self.delta = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1)[None]  # (1, 2r+1, 2r+1, 2)

    def __call__(self, coords: Tensor) -> Tensor:
        b, _, h, w = coords.shape
        centre = rearrange(coords, "b c h w -> (b h w) 1 1 c")
        out = [sample(level, centre / 2**i + self.delta.to(coords)) for i, level in enumerate(self.levels)]
        return rearrange(torch.cat([o.reshape(b * h * w, -1) for o in out], dim=-1), "(b h w) c -> b c h w", b=b, h=h)


def coords_grid(batch: int, h: int, w: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs, ys]).float()[None].expand(batch, -1, -1, -1)


class RAFT(nn.Module):
    """Large RAFT: two images (N, 3, H, W) in 0-255, H and W multiples of 8 -> flow (N, 2, H, W)
    in pixels after `iters` refinements (convex upsampling of the last one)."""

    def __init__(self) -> None:
        super().__init__()
        self.fnet = Encoder(256, "instance")
        self.cnet = Encoder(HIDDEN + CONTEXT, "batch")
        self.update_block = UpdateBlock()

    def upsample(self, flow: Tensor, mask: Tensor) -> Tensor:
        n, _, h, w = flow.shape
        mask = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
        up = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
        return rearrange((mask * up).sum(2), "n c a b h w -> n c (h a) (w b)")

    def forward(self, image1: Tensor, image2: Tensor, iters: int = 20) -> Tensor:
        image1, image2 = 2 * (image1 / 255.0) - 1, 2 * (image2 / 255.0) - 1
        f1, f2 = self.fnet(torch.cat([image1, image2])).chunk(2)
        corr = CorrPyramid(f1.float(), f2.float())
        net, inp = self.cnet(image1).split([HIDDEN, CONTEXT], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        coords0 = coords_grid(image1.shape[0], *f1.shape[-2:]).to(image1)
        coords1 = coords0.clone()
        mask = None
        for _ in range(iters):
            net, mask, delta = self.update_block(net, inp, corr(coords1), coords1 - coords0)
            coords1 = coords1 + delta
        assert mask is not None
        return self.upsample(coords1 - coords0, mask)


def load_raft(path: str | Path) -> RAFT:
    """Load `raft-things.pth` (or another large-RAFT state dict, `module.` prefixes stripped) strictly,
    through the allow-list reader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RAFT checkpoint not found: {path}")
    state = load_torch_file(path)
    if not isinstance(state, dict) or not any(k.removeprefix("module.").startswith("fnet.") for k in state):
        raise ValueError(f"{path}: not a RAFT state dict (no fnet.* weights)")
    net = RAFT()
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    return net.eval()
