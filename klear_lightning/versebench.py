"""`klear test --prompts DIR [--references DIR]`: Verse-Bench as users run it.

Prompt layout (Verse-Bench's): `DIR/set1/`, `DIR/set2/`, `DIR/set3/` (or one such folder), one
`<name>.json` per item with
- `video_prompt` (or `prompt`): the video caption;
- `audio_prompt`: a list of sound descriptions (Verse-Bench uses the first), or a string; may be empty;
- `speech_prompt`: `{"text": transcript}` (or a string); empty text = no speech;
and optionally `<name>.jpg` / `.jpeg` / `.png` beside it: the first frame. An item with a first frame
is generated as TI2AV, one without as T2AV.

Each item is generated once (seeded sampler), written as `OUT/<name>.mp4` (video with its audio track) and
`OUT/<name>.wav`, read back from those files (so what is scored is what was written, as Verse-Bench reads
its input folder) and scored on the subsets Verse-Bench scores each metric on (`metrics.table1` routes):
every item for the video metrics (ID against the item's first frame), CLAP and AV-A on set1 / set2 items
with an audio prompt, FD and KL on set2 items with an audio prompt against their reference audio, WER
and LSE on items with a speech transcript. Reference media come from `--references DIR`: `<name>.wav`
or `<name>.mp4`, directly in DIR or in `DIR/<set>/` (Verse-Bench keeps set2's reference wavs beside the
prompts, so `--references` may be the prompt folder itself). Without `--references` the metrics that
need reference media are reported as not computed. Metrics outside Table 1 score every item they apply to.

The report (`OUT/report.json`, `OUT/report.md`) has the Table 1 layout with one protocol line per column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from klear_lightning.media import MediaClip
from klear_lightning.metrics.report import build_report, write_report
from klear_lightning.metrics.suite import MetricsConfig, MetricSuite
from klear_lightning.metrics.table1 import Table1Column, column_of
from klear_lightning.sampling import SamplerConfig

SETS = ("set1", "set2", "set3")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ROW = "t2av"  # the suite row the generated items are scored in (every modality present)


@dataclass(frozen=True)
class PromptItem:
    name: str
    subset: str
    video_prompt: str
    audio_prompt: str
    transcript: str
    image: Path | None

    @property
    def task(self) -> str:
        return "ti2av" if self.image is not None else "t2av"


def _text(value: Any, path: Path, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = value[0] if value else ""
    if isinstance(value, dict):
        value = value.get("text", "")
    if not isinstance(value, str):
        raise ValueError(
            f"{path}: field {field!r} must be a string, a list of strings or {{'text': ...}}, got {type(value).__name__}"
        )
    return value.strip()


def read_prompts(root: Path) -> list[PromptItem]:
    """The items of a Verse-Bench prompt folder (`root/set*/NAME.json`, or one set folder)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--prompts: {root} is not a directory")
    folders = [root / s for s in SETS if (root / s).is_dir()] or [root]
    items: list[PromptItem] = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a JSON object")
            video = _text(data.get("video_prompt", data.get("prompt")), path, "video_prompt")
            if not video:
                raise ValueError(f"{path}: no video_prompt")
            image = next((path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).is_file()), None)
            items.append(
                PromptItem(
                    name=path.stem,
                    subset=folder.name if folder.name in SETS else "",
                    video_prompt=video,
                    audio_prompt=_text(data.get("audio_prompt"), path, "audio_prompt"),
                    transcript=_text(data.get("speech_prompt"), path, "speech_prompt"),
                    image=image,
                )
            )
    if not items:
        raise ValueError(f"--prompts: no <name>.json items under {root}")
    names = [i.name for i in items]
    if len(set(names)) != len(names):
        raise ValueError(
            f"--prompts: item names repeat across sets: {sorted({n for n in names if names.count(n) > 1})}"
        )
    return items


def routed(column: Table1Column | None, item: PromptItem) -> bool:
    """Does Verse-Bench score `column`'s metric on `item`?"""
    if column is None or column.route == "all":
        return True
    if column.route == "audio_prompt":
        return bool(item.audio_prompt) and item.subset in ("set1", "set2", "")
    if column.route == "set2":
        return bool(item.audio_prompt) and item.subset in ("set2", "")
    return bool(item.transcript)


def reference_file(references: Path, item: PromptItem) -> Path | None:
    for folder in (references, references / item.subset):
        for suffix in (".mp4", ".wav"):
            if (folder / f"{item.name}{suffix}").is_file():
                return folder / f"{item.name}{suffix}"
    return None


def read_clip(path: Path, meta: dict[str, Any], wav: Path | None = None) -> MediaClip:
    """A written file (mp4 with audio, an image or a wav) as a MediaClip; `wav` overrides the audio."""
    from klear_lightning.data.media import decode_media

    if path.suffix == ".wav":
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
        return MediaClip(video=None, fps=0.0, audio=torch.from_numpy(wave.mean(1)), sample_rate=sr, meta=meta)
    dec = decode_media(path)
    audio, sr = (torch.from_numpy(dec.audio), dec.sample_rate) if dec.audio is not None else (None, dec.sample_rate)
    if wav is not None:
        wave, sr = sf.read(wav, dtype="float32", always_2d=True)
        audio = torch.from_numpy(wave.mean(1))
    video = torch.from_numpy(np.ascontiguousarray(dec.video)) if dec.video is not None else None
    return MediaClip(video=video, fps=float(dec.fps or 1.0), audio=audio, sample_rate=sr, meta=meta)


def _meta(item: PromptItem) -> dict[str, Any]:
    return {
        "key": item.name,
        "set": item.subset,
        "video_caption": item.video_prompt,
        "audio_caption": item.audio_prompt,
        "transcript": item.transcript,
    }


def generate_items(
    config: Path,
    ckpt_path: Path,
    items: Sequence[PromptItem],
    out: Path,
    sampler: SamplerConfig,
    use_ema: bool = True,
    batch_size: int = 4,
) -> None:
    """Generate every item (TI2AV with its first frame, else T2AV) and write `out/<name>.mp4` + `.wav`.

    The audio stream's text is the audio prompt followed by the transcript (either may be empty)."""
    from klear_lightning.generate import _condition_latents, inference_module, prompt_batch
    from klear_lightning.media import write_clip

    module, data = inference_module(config, ckpt_path, use_ema)
    module.decoders = decoders = data.decoders()
    out.mkdir(parents=True, exist_ok=True)
    for task in ("t2av", "ti2av"):
        todo = [i for i in items if i.task == task]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            first = (
                torch.cat([_condition_latents(data, decoders, i.image, 1)[0] for i in chunk])
                if task == "ti2av"
                else None
            )
            audio_text = [" ".join(t for t in (i.audio_prompt, i.transcript) if t) or i.video_prompt for i in chunk]
            batch = prompt_batch(data, [i.video_prompt for i in chunk], audio_text, first_frames=first)
            for item, clip in zip(chunk, module.generate(batch, task, sampler)):
                write_clip(replace(clip, meta=_meta(item)), out, item.name)


def score_items(suite: MetricSuite, items: Sequence[PromptItem], out: Path, references: Path | None) -> None:
    """Feed each metric of `suite` the written clips of the items Verse-Bench scores it on."""
    generated = {i.name: read_clip(out / f"{i.name}.mp4", _meta(i), wav=out / f"{i.name}.wav") for i in items}
    for name, metric in suite.metrics[ROW].items():
        column = next((c for c in map(column_of, (col.key for col in metric.columns)) if c is not None), None)
        chosen = [i for i in items if routed(column, i)]
        if metric.modalities == ("video",) and metric.needs_reference:  # ID: against the item's first frame
            chosen = [i for i in chosen if i.image is not None]
            refs: list[MediaClip] | None = [read_clip(i.image, _meta(i)) for i in chosen]
        elif metric.needs_reference:
            if references is None:
                suite.missing_reference[(ROW, name)] = (
                    "needs reference media: klear test --prompts ... --references DIR"
                )
                continue
            files = {i.name: reference_file(references, i) for i in chosen}
            chosen = [i for i in chosen if files[i.name] is not None]
            refs = [read_clip(files[i.name], _meta(i)) for i in chosen]
        else:
            refs = None
        if chosen:
            suite.update_metric(ROW, name, [generated[i.name] for i in chosen], refs)


def run_prompts(
    config: Path,
    ckpt_path: Path,
    prompts: Path,
    references: Path | None = None,
    out: Path = Path("versebench"),
    metrics: MetricsConfig | None = None,
    use_ema: bool = True,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Generate a Verse-Bench prompt folder with a checkpoint and score it (Table 1 layout).

    Args:
        config: the training config of the checkpoint (model and data sections are used).
        ckpt_path: a `.ckpt` written by `klear fit` (or a sharded checkpoint folder).
        prompts: a Verse-Bench prompt folder (set1/ set2/ set3/ of <name>.json [+ <name>.jpg]).
        references: reference media (<name>.wav / <name>.mp4, flat or per set) for FD, KL and the other
            reference-based metrics; without it those are reported as not computed.
        out: where `<name>.mp4`, `<name>.wav`, `report.json` and `report.md` are written.
        metrics: metrics and extractor weights (`metrics.checkpoints.*`), sampling steps and seed.
        use_ema: use the EMA weights stored in the checkpoint when present.
        batch_size: items generated per forward pass.
    """
    items = read_prompts(prompts)
    if references is not None and not Path(references).is_dir():
        raise ValueError(f"--references: {references} is not a directory")
    cfg = replace(metrics or MetricsConfig(), tasks=[ROW], ground_truth=False)
    suite = MetricSuite(cfg)
    sampler = SamplerConfig(steps=cfg.sampling_steps, seed=cfg.seed)
    generate_items(config, ckpt_path, items, out, sampler, use_ema, batch_size)
    score_items(suite, items, out, Path(references) if references is not None else None)
    report = build_report(
        suite,
        {
            "checkpoint": str(ckpt_path),
            "prompts": str(prompts),
            "references": str(references) if references else "(none)",
            "items": len(items),
            "sets": ", ".join(f"{s}: {sum(i.subset == s for i in items)}" for s in SETS),
            "sampling_steps": cfg.sampling_steps,
            "seed": cfg.seed,
        },
    )
    report["tasks"] = {"generated": report["tasks"].pop(ROW)}
    report["table1"] = {"generated": report["table1"].pop(ROW)}
    paths = write_report(report, out)
    print(paths[1])
    return report
