"""RAFT parity (the paper's MS): the project's RAFT and Verse-Bench's per-pair motion score against
the official RAFT code (princeton-vl/RAFT, as Verse-Bench vendors it).

The reference (`references/raft.json`) was made by running that code once outside the project on
`seeded_fan_in_state_dict` weights; see the file for the seed and input recipe. Here the same weights
are saved as `raft-things.pth` (keys with `module.`, as the released file), loaded through `load_raft`
(the allow-list reader) and scored by `raft_flows` / `raft_pair_scores` (its padding included).
torchvision's RAFT (a registry implementation) is not compared: PyPI's torchvision is a CUDA build that
does not import beside torch 2.13 CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.parity import ParityResult, compare, load_reference
from benchmarks.parity.seeded import seeded_fan_in_state_dict, seeded_input
from klear_lightning.metrics import motion
from klear_lightning.metrics.nets import raft

FORMATS = ("raft-things.pth and the other princeton-vl RAFT (large) files: DataParallel state dicts",)


def check() -> ParityResult:
    ref = load_reference("raft")
    seed = ref["seed"]
    template = {f"module.{k}": v for k, v in raft.RAFT().state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raft-things.pth"
        torch.save(seeded_fan_in_state_dict(template, seed), path)
        net = raft.load_raft(path)
    frames = torch.cat([(seeded_input((1, 3, 126, 150), seed + k) * 256).floor().clamp(max=255) for k in (1, 2)])
    flow = motion.raft_flows(net, frames, iters=ref["iters"])
    score = motion.raft_pair_scores(flow)
    worst, per = compare(
        [("flow_up", flow.flatten()[::28], ref["flow_up_every_28"]), ("pair_score", score, [ref["score"]])]
    )
    return ParityResult(
        extractor="raft_large",
        reference=f"{ref['official']}; committed outputs (references/raft.json, seed {seed}): upsampled flow and "
        f"the mean |flow| pair score after {ref['iters']} iterations",
        max_rel_diff=worst,
        checkpoint_format=FORMATS,
        details=per,
    )


if __name__ == "__main__":
    print(check())
