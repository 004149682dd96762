"""`DIR/curate_report.json` + `.md` and one PNG histogram per score with its threshold(s) marked."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from klear_lightning.curate.config import CurateConfig
from klear_lightning.curate.records import ClipRecord

# score -> (config field of its lower bound, of its upper bound)
THRESHOLDS: dict[str, tuple[str | None, str | None]] = {
    "short_side": ("min_short_side", None),
    "motion": ("min_motion", "max_motion"),
    "sharpness": ("min_sharpness", None),
    "aesthetic": ("min_aesthetic", None),
    "silence_ratio": (None, "max_silence_ratio"),
    "snr_db": ("min_snr_db", None),
    "clipping_ratio": (None, "max_clipping_ratio"),
    "mos": ("min_mos", None),
    "av_offset_xcorr_s": ("-max_av_offset_s", "max_av_offset_s"),
    "av_offset_synchformer_s": (None, "max_av_offset_s"),
    "syncnet_offset": ("-max_syncnet_offset", "max_syncnet_offset"),
    "syncnet_conf": ("min_syncnet_conf", None),
    "clap_similarity": ("min_clap_similarity", None),
    "periodic_ratio": ("singing_min_periodic", None),
    "sustain": ("singing_min_sustain", None),
    "words": ("speech_min_words", None),
    "tag_speech": ("tagger_min_vocal", None),
    "tag_singing": ("tagger_min_vocal", None),
}


def _bound(cfg: CurateConfig, name: str | None) -> float | None:
    if name is None:
        return None
    return -getattr(cfg, name[1:]) if name.startswith("-") else float(getattr(cfg, name))


def histogram(values: list[float], name: str, bounds: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(values, bins=30, color="#4c72b0")
    for b in bounds:
        ax.axvline(b, color="#c44e52", linestyle="--", label=f"threshold {b:g}")
    ax.set_xlabel(name)
    ax.set_ylabel("clips")
    if bounds:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def build_report(records: list[ClipRecord], cfg: CurateConfig, out: Path) -> dict[str, Any]:
    """Counts kept / dropped per filter and reason, retention, skipped filters, bad inputs,
    histograms (written to `out/histograms/`)."""
    bad = [r for r in records if r.status == "bad_input"]
    clips = [r for r in records if r.status != "bad_input"]
    accepted = [r for r in clips if r.status == "accepted"]
    scored = [r for r in clips if r.scores]
    failed = Counter(name for r in clips for name in r.failed)
    first = Counter(r.failed[0] for r in clips if r.failed)
    only = Counter(r.failed[0] for r in clips if len(r.failed) == 1)
    names = sorted({k for r in scored for k in r.scores})
    filters = {}
    for name in names:
        values = [r.scores[name] for r in scored if r.scores.get(name) is not None]
        filters[name] = {
            "scored": len(values),
            "dropped": failed.get(name, 0),
            "only_reason": only.get(name, 0),
            "bounds": [b for b in map(lambda f: _bound(cfg, f), THRESHOLDS.get(name, (None, None))) if b is not None],
        }
    for name in ("scene_length", "caption"):
        if failed.get(name):
            filters.setdefault(name, {"scored": len(clips), "bounds": []}).update(
                dropped=failed[name], only_reason=only.get(name, 0)
            )
    skipped = {}
    for r in scored:
        for name, why in r.skipped.items():
            skipped.setdefault(name, {"clips": 0, "why": why})["clips"] += 1
    hist_dir = out / "histograms"
    hist_dir.mkdir(parents=True, exist_ok=True)
    for name, entry in filters.items():
        values = [r.scores[name] for r in scored if r.scores.get(name) is not None]
        if values:
            entry["histogram"] = str(
                histogram(values, name, entry["bounds"], hist_dir / f"{name}.png").relative_to(out)
            )
    seconds = sum(r.end - r.start for r in clips)
    kept_seconds = sum(r.end - r.start for r in accepted)
    return {
        "inputs": len({r.source_key for r in records}),
        "bad_inputs": [{"path": r.path, "reason": r.reasons[0]} for r in sorted(bad, key=lambda r: r.key)],
        "clips": len(clips),
        "accepted": len(accepted),
        "rejected": len(clips) - len(accepted),
        "retention_rate": len(accepted) / len(clips) if clips else 0.0,
        "retention_rate_duration": kept_seconds / seconds if seconds else 0.0,
        "accepted_seconds": round(kept_seconds, 3),
        "splits": dict(sorted(Counter(r.split for r in accepted).items())),
        "filters": filters,
        "first_reason": dict(first.most_common()),
        "skipped": skipped,
        "without_caption": sorted(r.key for r in clips if "caption" in r.failed),
        "rejected_clips": [
            {"key": r.key, "path": r.path, "start": r.start, "end": r.end, "reasons": r.reasons}
            for r in sorted(clips, key=lambda r: r.key)
            if r.status == "rejected"
        ],
        "cpu_s": round(sum(r.cpu_s for r in records), 2),
        "config": asdict(cfg),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# klear curate report",
        "",
        f"- inputs: {report['inputs']} ({len(report['bad_inputs'])} unreadable)",
        f"- clips: {report['clips']}, accepted {report['accepted']}, rejected {report['rejected']}",
        f"- retention: {report['retention_rate']:.1%} of clips, {report['retention_rate_duration']:.1%} of duration "
        f"({report['accepted_seconds']:.1f} s kept)",
        f"- accepted per split: {', '.join(f'{k} {v}' for k, v in report['splits'].items()) or 'none'}",
        f"- CPU: {report['cpu_s']:.1f} s in the split and scoring stages",
        "",
        "## Filters",
        "",
        "| score | scored | dropped | only reason | threshold | histogram |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in report["filters"].items():
        bounds = ", ".join(f"{b:g}" for b in f["bounds"]) or "-"
        hist = f"![{name}]({f['histogram']})" if f.get("histogram") else "-"
        lines.append(
            f"| {name} | {f['scored']} | {f.get('dropped', 0)} | {f.get('only_reason', 0)} | {bounds} | {hist} |"
        )
    lines += ["", "## Skipped filters", "", "| filter | clips | why |", "|---|---|---|"]
    lines += [f"| {name} | {s['clips']} | {s['why']} |" for name, s in report["skipped"].items()]
    lines += ["", "## Unreadable inputs", ""]
    lines += [f"- `{b['path']}`: {b['reason']}" for b in report["bad_inputs"]] or ["none"]
    lines += ["", "## Clips without captions", ""]
    lines += [f"- {k}" for k in report["without_caption"]] or ["none"]
    lines += ["", "## Rejected clips", ""]
    lines += [
        f"- {r['key']} ({r['start']:.2f}-{r['end']:.2f} s): {'; '.join(r['reasons'])}" for r in report["rejected_clips"]
    ] or ["none"]
    return "\n".join(lines) + "\n"
