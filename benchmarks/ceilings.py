"""The decoded ground truth as the ceiling of every reported column, per SyncWorld split and partition.

Clips: SyncWorld at the demo's geometry (2 s, 8 fps, 32 px, 16 kHz; seed 0), `CLIPS` per split of
the `test` and `ood` partitions, written to shards and read back (h264 / flac, as training reads
them). Two rows per (partition, split):
- `raw`: the clip as read back from its shard;
- `decoded`: the path generated media take: the default video codec (pixels) and audio codec
  (log-mel) encode the clip and decode the latents (the data module's normalisation is affine and
  cancels in the round trip).
Columns: SyncWorld's exact metrics (event offset and match, lip sync, speaker turns, colour, pitch)
and `wer_whisper_tiny_en_seedtts` (the shipped recogniser; reference: the spoken words, so `speech_multi`'s
speaker tags and `singing`'s vowel names are not scored), each with its clip count. Also: the audio
decoders tried on the test partition's speech (WER and STOI, a standard intelligibility proxy
in [0, 1], of each decoder's round trip), raw speech as the reference line.
Writes `benchmarks/results/ceilings.json`; prints one line (the decoded test-partition ceilings).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pystoi import stoi

from benchmarks.common import write_result
from klear_lightning.codecs import AudioCodecConfig, VideoCodecConfig, build_audio_codec, build_video_codec
from klear_lightning.data.shards import ShardWriter, iter_tar, parse_sample, read_index
from klear_lightning.data.syncworld import HoldoutRule, SyncWorldConfig, make_clip, to_sample
from klear_lightning.media import MediaClip
from klear_lightning.metrics.suite import MetricsConfig, MetricSuite

CLIPS = 20  # per split and partition: the demo's test partition (160 train clips per split // 8)
SEED = 0
GEOMETRY = SyncWorldConfig(duration=2.0, fps=8, size=32, sample_rate=16000)
PARTITIONS = {
    "test": ("sound", "speech_single", "speech_multi", "singing"),
    "ood": ("sound", "speech_single", "singing"),
}
METRICS = ["sync_offset_syncworld", "lipsync_syncworld", "speaker_turns_syncworld", "colour_syncworld",
           "pitch_syncworld", "wer_whisper_seedtts"]  # fmt: skip
# Audio decoders tried (same latents: 64 log-mel channels at 50 Hz): today's default first.
DECODERS: dict[str, AudioCodecConfig] = {
    "pinv_gl32": AudioCodecConfig(mel_inverse="pinv", griffin_lim_iters=32),
    "nnls_gl32": AudioCodecConfig(mel_inverse="nnls", griffin_lim_iters=32),
    "nnls_gl64": AudioCodecConfig(mel_inverse="nnls", griffin_lim_iters=64),
}


def read_back(root: Path, partition: str, split: str) -> list[MediaClip]:
    """`CLIPS` clips of (partition, split) written to shards and decoded as training reads them."""
    with ShardWriter(root / partition, split) as writer:
        for i in range(CLIPS):
            clip = make_clip(split, partition, i, SEED, GEOMETRY, HoldoutRule())
            writer.write(to_sample(clip, f"{split}-{partition}-{i:06d}", partition, SEED))
    return [
        parse_sample(raw, info.url.name).to_sample().to_clip()
        for info in read_index(root / partition, split)
        for raw in iter_tar(info.url)
    ]


def round_trip(clips: list[MediaClip], video_codec: Any, audio_codec: Any) -> list[MediaClip]:
    """Each clip encoded and decoded by the codecs, as `KlearModule.reference_media` decodes latents."""
    frames = video_codec.decode(video_codec.encode(torch.stack([c.video for c in clips])))
    samples = (clips[0].audio.numel() // audio_codec.hop) * audio_codec.hop
    waves = audio_codec.decode(audio_codec.encode(torch.stack([c.audio[:samples] for c in clips]).float()))
    return [
        MediaClip(video=f, fps=c.fps, audio=w.clamp(-1, 1), sample_rate=c.sample_rate, meta=c.meta)
        for c, f, w in zip(clips, frames, waves)
    ]


def score(suite: MetricSuite, clips: list[MediaClip]) -> dict[str, dict[str, float]]:
    """Every applicable column on `clips`: {key: {"value", "n"}}."""
    suite.reset()
    suite.update("t2av", clips, clips)
    results, _ = suite.compute()
    return {key: {"value": r.value, "n": r.n} for key, r in sorted(results["t2av"].items())}


def stoi_mean(reference: list[MediaClip], decoded: list[MediaClip]) -> float:
    return float(np.mean([
        stoi(r.audio.numpy().astype(np.float64)[: d.audio.numel()], d.audio.numpy().astype(np.float64), r.sample_rate)
        for r, d in zip(reference, decoded)
    ]))  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    start = time.process_time()
    suite = MetricSuite(MetricsConfig(metrics=METRICS, tasks=["t2av"], ground_truth=False))
    video_codec = build_video_codec(VideoCodecConfig())
    audio_codec = build_audio_codec(AudioCodecConfig())
    rows: dict[str, dict[str, Any]] = {}
    speech: list[MediaClip] = []
    with tempfile.TemporaryDirectory() as tmp:
        for partition, splits in PARTITIONS.items():
            for split in splits:
                clips = read_back(Path(tmp), partition, split)
                rows[f"{partition}/{split}"] = {
                    "raw": score(suite, clips),
                    "decoded": score(suite, round_trip(clips, video_codec, audio_codec)),
                }
                if partition == "test" and split.startswith("speech"):
                    speech += clips
    wer = suite.metrics["t2av"]["wer_whisper_seedtts"]
    decoders: dict[str, Any] = {"raw": {"wer": _wer(wer, speech)}}
    for name, cfg in DECODERS.items():
        codec = build_audio_codec(cfg)
        decoded = round_trip(speech, video_codec, codec)
        decoders[name] = {"config": asdict(cfg), "wer": _wer(wer, decoded), "stoi": stoi_mean(speech, decoded)}
    test = {split: rows[f"test/{split}"]["decoded"] for split in PARTITIONS["test"]}
    summary = (
        f"decoded test ceilings: WER single {test['speech_single']['wer_whisper_tiny_en_seedtts']['value']:.3f}, "
        f"multi {test['speech_multi']['wer_whisper_tiny_en_seedtts']['value']:.3f}; lip-sync single "
        f"{test['speech_single']['lipsync_corr_syncworld']['value']:.3f}, multi "
        f"{test['speech_multi']['lipsync_corr_syncworld']['value']:.3f}, singing "
        f"{test['singing']['lipsync_corr_syncworld']['value']:.3f}; event offset "
        f"{test['sound']['sync_offset_ms_syncworld']['value']:.1f} ms"
    )
    write_result("ceilings", {
        "clips_per_split": CLIPS, "seed": SEED, "geometry": asdict(GEOMETRY),
        "video_codec": asdict(VideoCodecConfig()), "audio_codec": asdict(AudioCodecConfig()),
        "rows": rows, "audio_decoders_on_test_speech": decoders,
        "cpu_seconds": time.process_time() - start,
    }, summary)  # fmt: skip


def _wer(metric: Any, clips: list[MediaClip]) -> float:
    metric.reset()
    metric.update(clips)
    return float(metric.compute())


if __name__ == "__main__":
    main()
