"""S3FD parity: the project's face detector against syncnet_python's S3FD code.

The reference (`references/s3fd.json`) was made by running syncnet_python's `S3FDNet` (with its
`PriorBox` and `Detect`) once outside the project on `seeded_fan_in_state_dict` weights; see the file for
the seed and input recipe. Here the same weights are saved as `sfd_face.pth` and loaded through
`load_s3fd` (the allow-list reader).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.parity import ParityResult, compare, load_reference
from benchmarks.parity.seeded import seeded_fan_in_state_dict, seeded_input
from klear_lightning.metrics.nets import s3fd

FORMATS = ("sfd_face.pth (syncnet_python's S3FD state dict)",)


def check() -> ParityResult:
    ref = load_reference("s3fd")
    seed = ref["seed"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sfd_face.pth"
        torch.save(seeded_fan_in_state_dict(s3fd.S3FD().state_dict(), seed + 10), path)
        net = s3fd.load_s3fd(path)
    x = seeded_input(tuple(ref["input"]), seed + 11, -120.0, 130.0)
    with torch.no_grad():
        loc, prob, sizes = net(x)
    prior = s3fd.priors(tuple(x.shape[-2:]), sizes)
    idx = torch.arange(0, prob.shape[1], 97)
    best = int(prob[0].argmax())
    best_row = torch.cat([prob[0, best : best + 1], s3fd.decode(loc[0, best : best + 1], prior[best : best + 1])[0]])
    worst, per = compare(
        [
            ("face_prob", prob[0, idx], ref["face_prob_every_97"]),
            ("box_regression", loc[0, idx], ref["loc_every_97"]),
            ("priors", prior[idx], ref["priors_every_97"]),
            ("best_detection", best_row, ref["best"]),
        ]
    )
    per["num_priors"] = 0.0 if prob.shape[1] == ref["num_priors"] else float("inf")
    return ParityResult(
        extractor="s3fd",
        reference=f"{ref['official']}; committed outputs (references/s3fd.json, seed {seed}): per-anchor face "
        "probability, box regression and prior, best detection",
        max_rel_diff=max(worst, per["num_priors"]),
        checkpoint_format=FORMATS,
        details=per,
    )


if __name__ == "__main__":
    print(check())
