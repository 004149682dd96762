"""`klear compare`: the ablation table (as the paper's Tables 2-3) from runs tracked in MLflow.

One row per `ablation` tag (the newest run of each), one column per metric (the run's last
logged value), the best value per column in bold (lowest, or highest for metrics named in
`maximize`). Writes `<out>/comparison.md` and `<out>/comparison.png` (one bar chart per metric,
the best bar highlighted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from klear_lightning.logging import sqlite_uri


@dataclass
class Row:
    ablation: str
    run_id: str
    values: dict[str, float]


def collect(tracking_uri: str, experiment: str, metrics: list[str], stage: str | None = None) -> list[Row]:
    """The newest run per `ablation` tag of `experiment` (optionally only runs tagged `stage`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"--experiment: no MLflow experiment named {experiment!r} at {tracking_uri}")
    query = f"tags.stage = '{stage}'" if stage else ""
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
    rows: dict[str, Row] = {}
    for run in runs:
        ablation = run.data.tags.get("ablation", "baseline")
        if ablation in rows:
            continue
        rows[ablation] = Row(ablation, run.info.run_id, {m: run.data.metrics.get(m, math.nan) for m in metrics})
    if not rows:
        raise ValueError(f"no runs in experiment {experiment!r}" + (f" with stage {stage!r}" if stage else ""))
    return sorted(rows.values(), key=lambda r: r.ablation)


def best_index(values: list[float], higher_is_better: bool) -> int | None:
    finite = [(v, i) for i, v in enumerate(values) if not math.isnan(v)]
    if not finite:
        return None
    return (max(finite) if higher_is_better else min(finite))[1]


def markdown_table(rows: list[Row], metrics: list[str], maximize: set[str]) -> str:
    head = "| ablation | " + " | ".join(f"{m} {'↑' if m in maximize else '↓'}" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    best = {m: best_index([r.values[m] for r in rows], m in maximize) for m in metrics}
    for i, row in enumerate(rows):
        cells = []
        for m in metrics:
            v = row.values[m]
            text = "–" if math.isnan(v) else f"{v:.4g}"
            cells.append(f"**{text}**" if best[m] == i else text)
        lines.append(f"| {row.ablation} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], metrics: list[str], maximize: set[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    names = [r.ablation for r in rows]
    for ax, m in zip(axes[0], metrics):
        values = [r.values[m] for r in rows]
        best = best_index(values, m in maximize)
        colours = ["tab:orange" if i == best else "tab:blue" for i in range(len(rows))]
        ax.bar(names, [0.0 if math.isnan(v) else v for v in values], color=colours)
        ax.set_title(f"{m} ({'higher' if m in maximize else 'lower'} is better)")
        ax.tick_params(axis="x", rotation=30)
        if best is not None:
            ax.annotate("best", (best, values[best]), ha="center", va="bottom")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def compare(
    metrics: list[str],
    run_dir: Path = Path("runs"),
    tracking_uri: str | None = None,
    experiment: str = "klear",
    stage: str | None = None,
    maximize: list[str] | None = None,
    out: Path = Path("runs/compare"),
) -> str:
    """Write the ablation comparison of `metrics` as `comparison.md` and `comparison.png` in `out`.

    Args:
        metrics: metric keys as logged, e.g. val/loss val/t2av/fd_panns.
        run_dir: the run directory whose `mlflow.db` is read (unless `tracking_uri`).
        tracking_uri: any MLflow tracking URI instead.
        experiment: MLflow experiment name.
        stage: only runs tagged with this stage.
        maximize: metrics where higher is better (e.g. CLAP score); the rest are lower-is-better.
    """
    uri = tracking_uri or sqlite_uri(run_dir)
    higher = set(maximize or [])
    unknown = higher - set(metrics)
    if unknown:
        raise ValueError(f"--maximize names metrics not in --metrics: {sorted(unknown)}")
    rows = collect(uri, experiment, metrics, stage)
    table = markdown_table(rows, metrics, higher)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table)
    plot(rows, metrics, higher, out / "comparison.png")
    print(table, end="")
    return table
