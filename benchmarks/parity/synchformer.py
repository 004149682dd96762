"""Synchformer parity: the project's network and Verse-Bench window against the official code.

The reference (`references/synchformer.json`) was made by running Verse-Bench's vendored Synchformer
(the official code) once outside the project on `seeded_fan_in_state_dict` weights; see the file for the
sizes, seed and input recipe. Here the same weights are written as a Synchformer *training
checkpoint* (weights under `model`, an OmegaConf config under `args`), loaded through
`load_synchformer` (the allow-list reader) and run through `desync_versebench`'s window (its
positional table trimmed 198 -> 156 rows as the official loader does).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from einops import rearrange
from omegaconf import OmegaConf

from benchmarks.parity import ParityResult, compare, load_reference
from benchmarks.parity.seeded import seeded_fan_in_state_dict, seeded_input
from klear_lightning.metrics import synchformer as sf
from klear_lightning.metrics.nets import synchformer as sfnet

FORMATS = (
    "synchformer_state_dict.pth (av-benchmark / MMAudio state dict)",
    "Synchformer training checkpoint (e.g. 24-01-04T16-39-21.pt: weights under `model`, OmegaConf `args`)",
)


def seeded_checkpoint(path: Path, ref: dict) -> None:
    """Write the reference's seeded weights as an official training checkpoint."""
    d = ref["dims"]
    cfg = sfnet.SynchformerConfig(
        dim=d["dim"],
        video_depth=d["depths"],
        audio_depth=d["depths"],
        global_depth=d["depths"],
        video_heads=d["video_heads"],
        audio_heads=d["audio_heads"],
        global_heads=d["global_heads"],
        segments=(d["table_rows_in_checkpoint"] - 2) // 14,
    )
    state = seeded_fan_in_state_dict(sfnet.Synchformer(cfg).state_dict(), ref["seed"])
    args = OmegaConf.create({"model": {"params": {"transformer": {"params": {"n_layer": d["depths"]}}}}})
    torch.save({"args": args, "model": state, "epoch": 1, "model_type": "Synchformer"}, path)


def check() -> ParityResult:
    ref = load_reference("synchformer")
    seed = ref["seed"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "24-01-04T16-39-21.pt"
        seeded_checkpoint(path, ref)
        model = sfnet.load_synchformer(path)
    mel = seeded_input((1, 11, 1, 128, 66), seed + 2, -1.0, 1.0)[:, :, 0]
    frames = (seeded_input((110, 3, 256, 320), seed + 3) * 256).floor().clamp(max=255).to(torch.uint8)
    wave = seeded_input((110 * 640,), seed + 4, -0.5, 0.5)
    window = sf.versebench_window(rearrange(frames, "t c h w -> t h w c"), 25.0, wave, 16000)
    assert window is not None
    a0 = int(sf.VERSEBENCH_START_FRAME / sf.VIDEO_FPS * sf.AUDIO_SR)
    starts = a0 + torch.arange(sf.VERSEBENCH_SEGMENTS) * sf.SEGMENT_HOP_SAMPLES
    with torch.no_grad():
        clip_logits = model(window.video[None], mel, trim_table=True)[0]
    worst, per = compare(
        [
            ("offset_logits", clip_logits, ref["clip_logits"]),
            (
                "window_pixel_sum_per_segment",
                window.video.double().sum((1, 2, 3, 4)),
                ref["clip_video_sum_per_segment"],
            ),
            ("window_audio_segment_first_samples", wave[starts], ref["clip_audio_first_samples"]),
        ]
    )
    return ParityResult(
        extractor="synchformer",
        reference=f"{ref['official']}; committed outputs (references/synchformer.json, seed {seed}): offset "
        "logits of its test-time window (short side 256, crop 224, 11 segments from frame 2)",
        max_rel_diff=worst,
        checkpoint_format=FORMATS,
        details=per,
    )


if __name__ == "__main__":
    print(check())
