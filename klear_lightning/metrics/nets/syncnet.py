"""SyncNet (Chung & Zisserman 2016) in the key layout of `syncnet_v2.model` (`netcnnaud`, `netfcaud`,
`netcnnlip`, `netfclip`): an audio stream on MFCC windows and a lip stream on 5-frame face crops;
and its loader.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from klear_lightning.safe_pickle import load_torch_file


def _bn_relu_2d(cin: int, cout: int, kernel: tuple[int, int], padding: tuple[int, int]) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU()]


def _bn_relu_3d(
    cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int], padding: tuple[int, int, int]
) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel, stride, padding), nn.BatchNorm3d(cout), nn.ReLU()]


def _fc(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """Audio stream: MFCC (N, 1, 13, 20) -> (N, D). Lip stream: (N, 3, 5, 224, 224) -> (N, D)."""

    def __init__(self, dim: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu_2d(1, 64, (3, 3), (1, 1)),
            nn.MaxPool2d(1, 1),
            *_bn_relu_2d(64, 192, (3, 3), (1, 1)),
            nn.MaxPool2d(3, (1, 2)),
            *_bn_relu_2d(192, 384, (3, 3), (1, 1)),
            *_bn_relu_2d(384, 256, (3, 3), (1, 1)),
            *_bn_relu_2d(256, 256, (3, 3), (1, 1)),
            nn.MaxPool2d(3, 2),
            *_bn_relu_2d(256, 512, (5, 4), (0, 0)),
        )
        self.netfcaud = _fc(dim)
        self.netfclip = _fc(dim)
        self.netcnnlip = nn.Sequential(
            *_bn_relu_3d(3, 96, (5, 7, 7), (1, 2, 2), (0, 0, 0)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu_3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu_3d(256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
            *_bn_relu_3d(256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
            *_bn_relu_3d(256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu_3d(256, 512, (1, 6, 6), (1, 1, 1), (0, 0, 0)),
        )

    def forward_aud(self, mfcc: Tensor) -> Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, lips: Tensor) -> Tensor:
        return self.netfclip(self.netcnnlip(lips).flatten(1))


def load_syncnet(path: str | Path) -> SyncNet:
    """Load `syncnet_v2.model` (a plain state dict) strictly, through the allow-list reader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet checkpoint not found: {path}")
    state = load_torch_file(path)
    if not isinstance(state, dict) or "netfcaud.3.weight" not in state:
        raise ValueError(f"{path}: not a SyncNet state dict (no netfcaud.3.weight)")
    net = SyncNet(dim=state["netfcaud.3.weight"].shape[0])
    net.load_state_dict(state, strict=True)
    return net.eval()
