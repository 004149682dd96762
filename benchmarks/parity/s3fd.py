"""S3FD parity: the project's face detector against syncnet_python's S3FD code.

The reference (`references/s3fd.json`) was made by running syncnet_python's `S3FDNet` (with its
`PriorBox` and `Detect`) once outside the project on `seeded_state_dict` weights; see the file for
the seed and input recipe. Here the same weights are saved as `sfd_face.pth` and loaded through
`load_s3fd` (the allow-list reader).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from benchmarks.parity.seeded import max_rel_diff, seeded_input, seeded_state_dict
from klear_lightning.metrics import face

REFERENCE = Path(__file__).parent / "references" / "s3fd.json"
FORMATS = "sfd_face.pth (syncnet_python's S3FD state dict)"


def check() -> tuple[str, float, str]:
    ref = json.loads(REFERENCE.read_text())
    seed = ref["seed"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sfd_face.pth"
        torch.save(seeded_state_dict(face.S3FD().state_dict(), seed + 10), path)
        net = face.load_s3fd(path)
    x = seeded_input(tuple(ref["input"]), seed + 11, -120.0, 130.0)
    with torch.no_grad():
        loc, prob, sizes = net(x)
    prior = face.priors(tuple(x.shape[-2:]), sizes)
    idx = torch.arange(0, prob.shape[1], 97)
    best = int(prob[0].argmax())
    best_row = torch.cat([prob[0, best: best + 1], face.decode(loc[0, best: best + 1], prior[best: best + 1])[0]])
    diffs = [max_rel_diff(prob[0, idx], torch.tensor(ref["face_prob_every_97"])),
             max_rel_diff(loc[0, idx], torch.tensor(ref["loc_every_97"])),
             max_rel_diff(prior[idx], torch.tensor(ref["priors_every_97"])),
             max_rel_diff(best_row, torch.tensor(ref["best"]))]
    if prob.shape[1] != ref["num_priors"]:
        diffs.append(float("inf"))
    return ("syncnet_python's S3FD (official code) on seeded weights: face probability, box regression and "
            "prior per anchor, best detection", max(diffs), FORMATS)


if __name__ == "__main__":
    print(check())
