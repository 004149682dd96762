"""PaSST-S and Verse-Bench's KL (`kl_passt_versebench`) vs Verse-Bench's code with `hear21passt`.

`hear21passt` needs torchaudio (and Verse-Bench's KL code librosa / pyloudnorm); PyPI's torchaudio is a
CUDA build that does not import against torch 2.13 CPU, so the official code was run once outside the
project on seeded weights (`references/passt_s.json`: a 2-block, 128-wide PaSST of the official
architecture, weights from `seeded.py` with std 0.2 so the class distributions are far from uniform).
Here the same weights are written as a release-style state dict, read through the project's
`metrics.checkpoints.passt` path, and the class probabilities of each wave (Verse-Bench's windows, mean
logits, softmax) and the KL of two pairs are compared with the official numbers.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.parity import ParityResult, compare, load_reference, skipped
from benchmarks.parity.seeded import seeded_state_dict
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext
from klear_lightning.metrics.nets.passt import CHECKPOINT_FORMATS, PaSST
from klear_lightning.metrics.passt import versebench_kl, versebench_probabilities

EXTRACTOR = "passt_s"
REFERENCE = "passt_s"


def waves(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed + 3))
    out = {}
    for name, seconds, f0 in (("gen13", 13.0, 220.0), ("ref7", 7.0, 330.0), ("gen1", 1.2, 500.0)):
        t = np.arange(int(seconds * 32000)) / 32000
        x = 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-((t % 0.5) * 6)) + 0.03 * rng.standard_normal(t.shape)
        out[name] = x.astype(np.float32)
    return out


def check() -> ParityResult:
    ref = load_reference(REFERENCE)
    w = waves(ref["seed"])
    if {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in w.items()} != ref["wave_sha256"]:
        return skipped(
            EXTRACTOR, ref["official"], CHECKPOINT_FORMATS, "input recipe does not reproduce the reference waves"
        )
    template = PaSST(dim=128, depth=2, heads=2, mlp_hidden=512).state_dict()
    if sorted(template) != ref["state_keys"]:
        return skipped(
            EXTRACTOR, ref["official"], CHECKPOINT_FORMATS, "the project's PaSST keys differ from the official ones"
        )
    state = seeded_state_dict(template, ref["seed"], std=0.2)
    from klear_lightning.metrics.suite import load_registry

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "passt-s-f128-p16-s10-ap.476-swa.pt"
        torch.save(state, path)
        metric = load_registry()["kl_passt_versebench"].build(BuildContext.create({"passt": str(path)}))
    clip = {
        k: MediaClip(video=None, fps=25.0, audio=torch.from_numpy(v), sample_rate=32000, meta={"key": k})
        for k, v in w.items()
    }
    with torch.inference_mode():
        probs = {k: versebench_probabilities(metric.model, torch.from_numpy(v)) for k, v in w.items()}
    pairs = [(f"probabilities/{k}", probs[k], np.array(v)) for k, v in ref["probabilities"].items()]
    for key, expected in ref["kl"].items():
        gen, reference = key.split("|")
        metric.reset()
        metric.update([clip[gen]], [clip[reference]])
        pairs.append((f"kl/{key}", float(metric.compute()), expected))
        pairs.append((f"kl_direct/{key}", float(versebench_kl(probs[reference], probs[gen])), expected))
    worst, per = compare(pairs)
    return ParityResult(
        EXTRACTOR,
        f"reference numbers: {ref['official']}, seed {ref['seed']}",
        worst,
        CHECKPOINT_FORMATS,
        details={"per_output": per, "input": ref["input_recipe"], "weights": ref["weights_recipe"]},
    )
