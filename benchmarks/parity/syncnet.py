"""SyncNet parity: the project's network and LSE scoring against syncnet_python's own code.

The reference (`references/syncnet.json`) was made by running syncnet_python's `SyncNetInstance.evaluate`
(Verse-Bench's copy) once outside the project on `seeded_fan_in_state_dict` weights; see the file for the
seed and input recipe. Here the same weights are saved as `syncnet_v2.model`, loaded through
`load_syncnet` (the allow-list reader) and scored by `track_distances` / `lse_scores`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.parity import ParityResult, compare, load_reference
from benchmarks.parity.seeded import seeded_fan_in_state_dict, seeded_input
from klear_lightning.metrics import syncnet
from klear_lightning.metrics.nets import syncnet as syncnet_net

FORMATS = ("syncnet_v2.model (syncnet_python's state dict)",)


def check() -> ParityResult:
    ref = load_reference("syncnet")
    seed, frames = ref["seed"], ref["frames"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "syncnet_v2.model"
        torch.save(seeded_fan_in_state_dict(syncnet_net.SyncNet().state_dict(), seed), path)
        net = syncnet_net.load_syncnet(path)
    images = (seeded_input((frames, 224, 224, 3), seed + 1) * 256).floor().clamp(max=255)
    audio = (seeded_input((frames * 640,), seed + 2, -1.0, 1.0) * 20000).round()
    lips = images.permute(3, 0, 1, 2)
    dists = syncnet.track_distances(net, lips, audio)
    conf, _, offset = syncnet.lse_scores(dists)
    windows = range(dists.shape[0])
    mfcc = syncnet.mfcc(audio)
    with torch.no_grad():
        aud = net.forward_aud(torch.stack([mfcc[None, :, 4 * i : 4 * i + 20] for i in windows]))
        lip = net.forward_lip(torch.stack([lips[:, i : i + 5] for i in windows]))
    reference = torch.tensor(ref["dists"])
    worst, per = compare(
        [
            ("distances", dists, reference),
            ("audio_features", aud[:, :8], ref["audio_features_first8"]),
            ("lip_features", lip[:, :8], ref["lip_features_first8"]),
        ]
    )
    # LSE-C is a difference of two distances: compared on the distances' scale
    per["lse_c"] = abs(conf - ref["conf"]) / float(reference.abs().max())
    per["offset"] = 0.0 if offset == ref["offset"] else float("inf")
    return ParityResult(
        extractor="syncnet",
        reference=f"{ref['official']}; committed outputs (references/syncnet.json, seed {seed}): features, "
        "distances over offsets -15..15, LSE-C and offset",
        max_rel_diff=max(worst, per["lse_c"], per["offset"]),
        checkpoint_format=FORMATS,
        details=per,
    )


if __name__ == "__main__":
    print(check())
