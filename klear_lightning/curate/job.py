"""`klear curate`: raw videos -> filtered, split-routed, transcribed clips, as a Ray Data job.

inputs (folder or JSONL) -> Source records -> flat_map(split_source): one ClipRecord per scene piece
-> map(ClipScorer actors): filters, routing, transcript -> the driver appends each finished record
to `DIR/results.jsonl`, then writes `DIR/accepted.jsonl`, `DIR/accepted/<split>.jsonl`, and the
report. Ray runs locally (`workers` CPUs, no dashboard) unless `ray_address` names a cluster.
Resumable: a source whose every clip is in results.jsonl is not read again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from klear_lightning.curate.config import CurateConfig, load_config
from klear_lightning.curate.records import ClipRecord, Source
from klear_lightning.curate.report import build_report, markdown
from klear_lightning.curate.stages import ClipScorer, split_source
from klear_lightning.data.prepare import SIDECARS, make_key
from klear_lightning.errors import ConfigError

log = logging.getLogger(__name__)
CAPTION_KEYS = ("video_caption", "audio_caption", "transcript")


def _captions(record: dict[str, Any]) -> dict[str, str]:
    return {k: str(record[k]).strip() for k in CAPTION_KEYS if record.get(k)}


def find_sources(inputs: Path) -> tuple[list[Source], list[ClipRecord]]:
    """Sources from a folder (every non-sidecar file; captions from `<file>.json`, `<stem>.json` or
    `<stem>.txt` when present) or a JSONL manifest (`path` relative to it, caption fields, optional
    `key`); unusable manifest lines and caption files come back as `bad_input` records."""
    sources, bad = [], []
    if inputs.is_file():
        for n, line in enumerate(inputs.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                path = (inputs.parent / rec["path"]).resolve()
                sources.append(Source(str(path), rec.get("key") or make_key(str(rec["path"])), _captions(rec)))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                bad.append(ClipRecord.bad_input(f"{inputs}:{n}", f"line-{n}", f"bad_manifest_line: {e!r}"))
        return sources, bad
    if not inputs.is_dir():
        raise ConfigError(f"inputs: {inputs} is neither a folder nor a JSONL manifest")
    for path in sorted(p for p in inputs.rglob("*") if p.is_file() and p.suffix not in SIDECARS):
        key = make_key(str(path.relative_to(inputs)))
        side = next((p for p in (path.with_name(path.name + ".json"), path.with_suffix(".json")) if p.exists()), None)
        try:
            if side is not None:
                caps = _captions(json.loads(side.read_text()))
            elif path.with_suffix(".txt").exists():
                text = path.with_suffix(".txt").read_text().strip()
                caps = {"video_caption": text, "audio_caption": text} if text else {}
            else:
                caps = {}
        except (json.JSONDecodeError, AttributeError) as e:
            bad.append(ClipRecord.bad_input(str(path), key, f"bad_caption_file: {side}: {e}"))
            continue
        sources.append(Source(str(path), key, caps))
    return sources, bad


def read_results(path: Path) -> list[ClipRecord]:
    """The records of every finished source in results.jsonl (a source interrupted halfway is
    dropped, so it is redone); the file is rewritten to hold only those."""
    if not path.exists():
        return []
    by_source: dict[str, list[ClipRecord]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = ClipRecord.from_json(line)
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut short by a crash
        by_source.setdefault(rec.source_key, []).append(rec)
    done = [r for recs in by_source.values() if len({r.key for r in recs}) == recs[0].scenes for r in recs]
    path.write_text("".join(r.to_json() + "\n" for r in done))
    return done


def _split_rows(row: dict[str, str], cfg: CurateConfig) -> list[dict[str, str]]:
    return [{"json": r.to_json()} for r in split_source(Source.from_json(row["json"]), cfg)]


class _ScoreRows:
    def __init__(self, cfg: CurateConfig) -> None:
        import torch

        torch.set_num_threads(1)
        self.scorer = ClipScorer(cfg)

    def __call__(self, row: dict[str, str]) -> dict[str, str]:
        return {"json": self.scorer(ClipRecord.from_json(row["json"])).to_json()}


def run_ray(sources: list[Source], cfg: CurateConfig, workers: int, ray_address: str | None):
    """Yield the finished records of `sources` as the Ray Data job produces them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = not ray.is_initialized()
    if started:
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=256 * 1024**2,
                configure_logging=False,
            )
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(
            [{"json": s.to_json()} for s in sources], override_num_blocks=min(len(sources), 10_000)
        )
        ds = ds.flat_map(_split_rows, fn_kwargs={"cfg": cfg}, num_cpus=1)
        ds = ds.map(
            _ScoreRows, fn_constructor_kwargs={"cfg": cfg}, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1
        )
        for row in ds.iter_rows():
            yield ClipRecord.from_json(row["json"])
    finally:
        if started:
            ray.shutdown()


def accepted_line(rec: ClipRecord) -> dict[str, Any]:
    """One line of accepted.jsonl: what `klear prepare` reads (path, key, start, end, captions,
    transcript, speaker attributes) plus the split and every score."""
    return {
        "path": rec.path,
        "key": rec.key,
        "start": rec.start,
        "end": rec.end,
        "split": rec.split,
        "video_caption": rec.captions.get("video_caption", ""),
        "audio_caption": rec.captions.get("audio_caption", ""),
        "transcript": rec.transcript,
        "attributes": rec.attributes,
        "source": rec.path,
        "scores": rec.scores,
    }


def write_outputs(records: list[ClipRecord], cfg: CurateConfig, out: Path) -> dict[str, Any]:
    accepted = sorted((r for r in records if r.status == "accepted"), key=lambda r: r.key)
    (out / "accepted.jsonl").write_text("".join(json.dumps(accepted_line(r)) + "\n" for r in accepted))
    per_split = out / "accepted"
    per_split.mkdir(exist_ok=True)
    for old in per_split.glob("*.jsonl"):
        old.unlink()
    for split in sorted({r.split for r in accepted}):
        lines = [json.dumps(accepted_line(r)) + "\n" for r in accepted if r.split == split]
        (per_split / f"{split}.jsonl").write_text("".join(lines))
    report = build_report(records, cfg, out)
    (out / "curate_report.json").write_text(json.dumps(report, indent=1))
    (out / "curate_report.md").write_text(markdown(report))
    return report


def check_models(cfg: CurateConfig) -> None:
    """Load each configured model once here, so a wrong file stops the command with one line before
    any worker starts."""
    import torch

    from klear_lightning.curate.annotate import AudioCaptioner, Captioner, SpeakerClassifier
    from klear_lightning.curate.dnsmos import Dnsmos
    from klear_lightning.curate.models import audioset_indices
    from klear_lightning.metrics.clap import load_clap
    from klear_lightning.metrics.nets.aesthetic import load_aesthetic_head, load_clip_vision
    from klear_lightning.metrics.nets.cnn14 import load_cnn14
    from klear_lightning.metrics.nets.s3fd import load_s3fd
    from klear_lightning.metrics.nets.synchformer import load_synchformer
    from klear_lightning.metrics.nets.syncnet import load_syncnet

    def whisper(path: Path) -> object:
        from faster_whisper import WhisperModel

        return WhisperModel(str(path), device="cpu", compute_type="float32", cpu_threads=1)

    def clap(path: Path) -> object:
        tokenizer = Path(cfg.clap_tokenizer).expanduser() if cfg.clap_tokenizer else None
        return load_clap(path, tokenizer, torch.device("cpu"))

    def tagger(path: Path) -> object:
        audioset_indices(Path(str(cfg.tagger_labels)).expanduser())
        return load_cnn14(path)

    loaders = {
        "synchformer": load_synchformer,
        "whisper": whisper,
        "dnsmos": Dnsmos,
        "s3fd": load_s3fd,
        "syncnet": load_syncnet,
        "clip_vision": load_clip_vision,
        "aesthetic_head": load_aesthetic_head,
        "clap": clap,
        "tagger": tagger,
        "captioner": lambda p: Captioner(p, cfg.caption_prompt),
        "audio_captioner": lambda p: AudioCaptioner(p, cfg.audio_caption_prompt),
    }
    paths = {name: getattr(cfg, name) for name in loaders}
    paths |= {f"speaker_models.{name}": path for name, path in cfg.speaker_models.items()}
    for name, path in paths.items():
        if not path:
            continue
        try:
            loaders.get(name, SpeakerClassifier)(Path(path).expanduser())
        except ConfigError:
            raise
        except Exception as err:  # any failure to read the user's file is reported, not a traceback
            raise ConfigError(f"{name}: could not load {path}: {str(err).strip().splitlines()[0]}") from err


def curate(
    inputs: Path, out: Path, config: Path | None = None, ray_address: str | None = None, workers: int = 1
) -> dict[str, Any]:
    """Filter, scene-split, route and transcribe raw videos into clips `klear prepare` takes.

    Args:
        inputs: a folder of media files (captions from `<file>.json` / `<stem>.txt` sidecars when
            present) or a JSONL manifest (`path`, `video_caption`, `audio_caption`, `transcript`, `key`).
        out: output folder: accepted.jsonl, accepted/<split>.jsonl, curate_report.json / .md,
            histograms/, results.jsonl (every clip, for resuming).
        config: a YAML file setting any CurateConfig field (thresholds, model paths).
        ray_address: a Ray cluster to run on (e.g. `auto` or `ray://head:10001`); unset: a local
            Ray with `workers` CPUs.
        workers: scoring actors (and, locally, Ray CPUs).
    """
    cfg = load_config(config)
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    inputs, out = Path(inputs), Path(out)
    sources, bad = find_sources(inputs)
    check_models(cfg)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = read_results(results)
    finished = {r.source_key for r in done}
    todo = [s for s in sources if s.key not in finished]
    records = done + [b for b in bad if b.source_key not in finished]
    log.info("curate: %d sources, %d already done", len(sources), len(sources) - len(todo))
    if todo:
        with results.open("a") as f:
            for rec in run_ray(todo, cfg, workers, ray_address):
                f.write(rec.to_json() + "\n")
                f.flush()
                records.append(rec)
    report = write_outputs(records, cfg, out)
    print(
        f"curate: {report['inputs']} inputs ({len(report['bad_inputs'])} unreadable), {report['accepted']} of "
        f"{report['clips']} clips accepted ({report['retention_rate']:.1%}); report: {out / 'curate_report.md'}"
    )
    return report
