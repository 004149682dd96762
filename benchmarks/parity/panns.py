"""PANNs Cnn14 16 kHz (FD / KL, av-benchmark protocol) vs the official `panns-inference` package.

Official model: `panns_inference.models.Cnn14` with the 16 kHz checkpoint's settings (window 512, hop
160, 64 mels, 50-8000 Hz, 527 classes), seeded weights (its fixed front end, the DFT kernels and mel
filters, as the package builds them). The same weights are written in the official training-checkpoint
layout (with a numpy sampler state) and read through the project's `metrics.checkpoints.panns` path;
both run on the same 3 s wave. Compared: the fc1 embedding and the clip-wise probabilities.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from benchmarks.parity import ParityResult, compare, skipped
from benchmarks.parity.seeded import seeded_state_dict
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext
from klear_lightning.metrics.nets.cnn14 import CHECKPOINT_FORMATS
from klear_lightning.metrics.panns import panns_extractor

EXTRACTOR = "panns_cnn14_16k"
SEED = 0


def official_cnn14() -> torch.nn.Module:
    """`panns_inference.models.Cnn14` without running the package's `__init__` (which downloads a
    label file at import)."""
    if "panns_inference" not in sys.modules:
        spec = importlib.util.find_spec("panns_inference")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("panns-inference is not installed")
        package = types.ModuleType("panns_inference")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["panns_inference"] = package
    from panns_inference.models import Cnn14

    return Cnn14(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527)


def official_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """The layout audioset_tagging_cnn's training script saves (the sampler state holds numpy arrays)."""
    rng = np.random.RandomState(1234)
    return {
        "iteration": 300000,
        "model": state,
        "sampler": {
            "indexes_per_class": [rng.permutation(8) for _ in range(3)],
            "queue": [2, 0, 1],
            "pointers_of_classes": [0, 3, 1],
        },
    }


def wave(seconds: float = 3.0, sr: int = 16000) -> torch.Tensor:
    rng = np.random.Generator(np.random.PCG64(SEED + 1))
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(t.shape)
    return torch.from_numpy(x.astype(np.float32))


def check() -> ParityResult:
    try:
        official = official_cnn14()
        reference = f"panns-inference=={version('panns-inference')} models.Cnn14(16 kHz settings), seed {SEED}"
    except ImportError:
        return skipped(
            EXTRACTOR,
            "panns-inference",
            CHECKPOINT_FORMATS,
            "panns-inference is not installed (pip install panns-inference)",
        )
    state = seeded_state_dict(
        official.state_dict(), SEED, keep=lambda k: k.startswith(("spectrogram_extractor.", "logmel_extractor."))
    )
    official.load_state_dict(state, strict=True)
    official.eval()
    x = wave()
    with torch.no_grad():
        theirs = official(x[None])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Cnn14_16k_mAP=0.438.pth"
        torch.save(official_checkpoint(state), path)
        extractor = panns_extractor(BuildContext.create({"panns": str(path)}))
        ours = extractor([MediaClip(video=None, fps=25.0, audio=x, sample_rate=16000, meta={"key": "parity"})])
    worst, per = compare(
        [
            ("embedding", ours.embedding[0], theirs["embedding"][0]),
            ("clipwise_output", torch.sigmoid(ours.logits[0]), theirs["clipwise_output"][0]),
        ]
    )
    return ParityResult(
        EXTRACTOR,
        reference,
        worst,
        CHECKPOINT_FORMATS,
        details={"per_output": per, "input": "3 s at 16 kHz: 0.3 sin(440 Hz) + 0.05 N(0,1), PCG64 seed 1"},
    )
