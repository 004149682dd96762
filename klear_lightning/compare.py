"""`klear compare`: ablation arms over seeds, with confidence intervals and claim verdicts, from MLflow.

Every finished MLflow run (status FINISHED) that passes the filters counts once for its arm (tag
`ablation`) and seed (tag `seed`, else the param `seed_everything`); when an arm has several runs
of one seed, the newest counts. Per arm and metric (the run's last logged value): the mean over
seeds and its two-sided 95 % confidence interval, Student t with n - 1 degrees of freedom. The
difference of an arm to the baseline arm is paired by seed (arm - baseline on each seed both ran)
with the same interval over the per-seed differences. A claim (an arm, a metric, the direction the
paper reports) is *reproduced* when the interval of its difference excludes 0 in that direction,
*refuted* when it excludes 0 the other way, else *unresolved* (also below two paired seeds).

Why Student t and not a bootstrap: at 3 seeds a percentile bootstrap interval cannot reach beyond
the observed values, so its nominal 95 % covers about 75 %; the t interval is exact for normal
noise and wider, as it should be at n = 3.

Writes `<out>/comparison.md`, `<out>/comparison.json` and `<out>/comparison.png` (per metric: each
seed's value, the mean and its interval per arm).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from klear_lightning.errors import ConfigError

LEVEL = 0.95
INTERVAL_NOTE = (
    "mean [95 % confidence interval] over seeds (n): Student t, two-sided, n - 1 degrees of freedom; "
    "no interval at n = 1"
)
DIRECTIONS = ("higher", "lower")


@dataclass
class Estimate:
    """Mean over n values with its Student t interval (low, high; NaN when n < 2)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{_num(self.mean)} (1)"
        return f"{_num(self.mean)} [{_num(self.low)}, {_num(self.high)}] ({self.n})"


def estimate(values: list[float]) -> Estimate:
    """Mean and two-sided `LEVEL` Student t interval of the finite `values`."""
    from scipy import stats

    xs = [v for v in values if math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(1, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(n, mean, sd, mean - half, mean + half)


@dataclass
class Claim:
    """A claim of the paper: `arm` against `against` (default: the baseline arm) on `metric` is `expect`."""

    arm: str
    metric: str
    expect: str
    description: str
    against: str | None = None


@dataclass
class Verdict:
    claim: Claim
    against: str
    difference: Estimate
    verdict: str
    reason: str = ""


@dataclass
class Arm:
    name: str
    runs: dict[str, str] = field(default_factory=dict)  # seed -> run id
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> seed -> value


@dataclass
class Collected:
    arms: dict[str, Arm]
    left_out: dict[str, int]  # run status -> count (not FINISHED)
    replaced: int  # older runs of an (arm, seed) that has a newer one


def _seed_key(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (1 << 62, seed)


def _num(x: float) -> str:
    return f"{x:.3g}".replace("-", "−")


def load_claims(path: Path) -> list[Claim]:
    """Claims from a YAML list of {arm, metric, expect: higher|lower, description, against (optional)}."""
    if not Path(path).is_file():
        raise ConfigError(f"claims: no file at {path}")
    try:
        items = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"claims: {path} is not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(items, list):
        raise ConfigError(f"claims: {path}: expected a YAML list of claims")
    claims = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"claims: {path}: item {i} is not a mapping")
        missing = {"arm", "metric", "expect", "description"} - set(item)
        unknown = set(item) - {"arm", "metric", "expect", "description", "against"}
        if missing or unknown:
            raise ConfigError(
                f"claims: {path}: item {i}: "
                + (f"missing {sorted(missing)}" if missing else f"unknown keys {sorted(unknown)}")
            )
        if item["expect"] not in DIRECTIONS:
            raise ConfigError(
                f"claims: {path}: item {i}: expect must be one of {list(DIRECTIONS)}, got {item['expect']!r}"
            )
        claims.append(Claim(**{k: str(v) for k, v in item.items()}))
    return claims


def collect(
    tracking_uri: str,
    metrics: list[str],
    experiment: str | None = None,
    stage: str | None = None,
    sweep: str | None = None,
) -> Collected:
    """The finished runs matching the filters, as arms with one value per metric and seed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"experiment: no MLflow experiment named {experiment!r} at {tracking_uri}")
        ids = [exp.experiment_id]
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in (("stage", stage), ("sweep", sweep)) if v)
    runs = client.search_runs(ids, filter_string=query, order_by=["attributes.start_time DESC"], max_results=50000)
    arms: dict[str, Arm] = {}
    left_out: dict[str, int] = {}
    replaced = 0
    for run in runs:
        if run.info.status != "FINISHED":
            left_out[run.info.status] = left_out.get(run.info.status, 0) + 1
            continue
        name = run.data.tags.get("ablation", "baseline")
        seed = run.data.tags.get("seed", run.data.params.get("seed_everything", "?"))
        arm = arms.setdefault(name, Arm(name))
        if seed in arm.runs:
            replaced += 1
            continue
        arm.runs[seed] = run.info.run_id
        for m in metrics:
            arm.values.setdefault(m, {})[seed] = run.data.metrics.get(m, math.nan)
    for arm in arms.values():
        arm.runs = dict(sorted(arm.runs.items(), key=lambda kv: _seed_key(kv[0])))
        arm.values = {m: dict(sorted(v.items(), key=lambda kv: _seed_key(kv[0]))) for m, v in arm.values.items()}
    if not arms:
        where = f"experiment {experiment!r}" if experiment else tracking_uri
        filters = ", ".join(f"{k} {v!r}" for k, v in (("stage", stage), ("sweep", sweep)) if v)
        field = next((k for k, v in (("sweep", sweep), ("stage", stage), ("experiment", experiment)) if v), "run_dir")
        raise ConfigError(f"{field}: no finished runs in {where}" + (f" with {filters}" if filters else ""))
    return Collected(dict(sorted(arms.items())), left_out, replaced)


def paired_difference(arm: Arm, against: Arm, metric: str) -> Estimate:
    """arm - against over the seeds where both have a finite value."""
    a, b = arm.values.get(metric, {}), against.values.get(metric, {})
    seeds = [s for s in a if s in b and math.isfinite(a[s]) and math.isfinite(b[s])]
    return estimate([a[s] - b[s] for s in seeds])


def judge(claim: Claim, arms: dict[str, Arm], baseline: str) -> Verdict:
    against = claim.against or baseline
    missing = [a for a in (claim.arm, against) if a not in arms]
    if missing:
        return Verdict(claim, against, estimate([]), "unresolved", f"no finished runs of {', '.join(missing)}")
    diff = paired_difference(arms[claim.arm], arms[against], claim.metric)
    if diff.n < 2:
        return Verdict(claim, against, diff, "unresolved", f"{diff.n} paired seed(s); an interval needs 2")
    sign = 1 if claim.expect == "higher" else -1
    if not diff.excludes_zero():
        return Verdict(claim, against, diff, "unresolved", "the interval contains 0")
    agrees = (diff.low > 0) == (sign > 0)
    return Verdict(claim, against, diff, "reproduced" if agrees else "refuted")


def markdown(
    collected: Collected, metrics: list[str], maximize: set[str], baseline: str, verdicts: list[Verdict], source: str
) -> str:
    arms = collected.arms
    n_runs = sum(len(a.runs) for a in arms.values())
    left = ", ".join(f"{n} {s.lower()}" for s, n in sorted(collected.left_out.items()))
    lines = [
        "# Ablation comparison",
        "",
        f"{n_runs} finished runs of {len(arms)} arms from `{source}`"
        + (f"; left out (not finished): {left}" if left else "")
        + (f"; {collected.replaced} older run(s) of a repeated arm and seed ignored" if collected.replaced else "")
        + ".",
        f"Each cell: {INTERVAL_NOTE}. Differences are paired by seed (arm − {baseline} on each seed both ran).",
        "",
    ]
    if verdicts:
        lines += [
            "## Claims",
            "",
            "| claim | arms | metric | expected | difference [95 % CI] (n) | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for v in verdicts:
            c = v.claim
            verdict = f"**{v.verdict}**" + (f" ({v.reason})" if v.reason else "")
            lines.append(
                f"| {c.description} | {c.arm} − {v.against} | {c.metric} | {c.expect} | {v.difference.text()} | {verdict} |"
            )
        lines.append("")
    head = " | ".join(f"{m} {'↑' if m in maximize else '↓'}" for m in metrics)
    lines += ["## Arms", "", f"| arm | seeds | {head} |", "|---|---|" + "---|" * len(metrics)]
    for arm in arms.values():
        cells = " | ".join(estimate(list(arm.values[m].values())).text() for m in metrics)
        lines.append(f"| {arm.name} | {', '.join(arm.runs)} | {cells} |")
    lines.append("")
    if baseline in arms and len(arms) > 1:
        lines += [
            f"## Difference to {baseline} (paired by seed)",
            "",
            "Bold: the interval excludes 0.",
            "",
            f"| arm | {head} |",
            "|---|" + "---|" * len(metrics),
        ]
        for arm in arms.values():
            if arm.name == baseline:
                continue
            cells = []
            for m in metrics:
                d = paired_difference(arm, arms[baseline], m)
                cells.append(f"**{d.text()}**" if d.excludes_zero() else d.text())
            lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
        lines.append("")
    elif baseline not in arms:
        lines += [f"No finished runs of the baseline arm {baseline!r}: no differences.", ""]
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    """JSON-ready: NaN -> None, dataclasses -> dicts."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def report(
    collected: Collected,
    metrics: list[str],
    baseline: str,
    verdicts: list[Verdict],
    source: str,
    filters: dict[str, str | None],
) -> dict[str, Any]:
    arms = collected.arms
    out: dict[str, Any] = {
        "source": source,
        "filters": filters,
        "interval": {"method": "student_t", "level": LEVEL, "paired_by": "seed"},
        "baseline": baseline,
        "metrics": metrics,
        "left_out": collected.left_out,
        "replaced_runs": collected.replaced,
        "arms": {},
        "differences": {},
        "claims": [],
    }
    for arm in arms.values():
        out["arms"][arm.name] = {
            "runs": arm.runs,
            "metrics": {
                m: {**asdict(estimate(list(arm.values[m].values()))), "values": arm.values[m]} for m in metrics
            },
        }
        if baseline in arms and arm.name != baseline:
            out["differences"][arm.name] = {m: asdict(paired_difference(arm, arms[baseline], m)) for m in metrics}
    for v in verdicts:
        out["claims"].append(
            {
                **asdict(v.claim),
                "against": v.against,
                "difference": asdict(v.difference),
                "verdict": v.verdict,
                "reason": v.reason,
            }
        )
    return _clean(out)


def plot(collected: Collected, metrics: list[str], maximize: set[str], baseline: str, path: Path) -> Path:
    """Per metric, two panels: each arm's seeds, mean and interval; each arm's paired difference to
    the baseline with its interval and the zero line (what the verdicts read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(collected.arms.values())
    others = [a for a in arms if a.name != baseline] if baseline in collected.arms else []
    per = 2 if others else 1  # panel rows per metric
    cols = min(4, len(metrics))
    rows = per * math.ceil(len(metrics) / cols)
    width = max(4.0, 0.6 * len(arms) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.6 * rows), squeeze=False)
    for k in range(len(metrics), cols * rows // per):  # empty places of the last row of metrics
        for r in range(per):
            axes[per * (k // cols) + r, k % cols].axis("off")
    for k, m in enumerate(metrics):
        row, col = per * (k // cols), k % cols
        ax = axes[row, col]
        for i, arm in enumerate(arms):
            finite = [v for v in arm.values[m].values() if math.isfinite(v)]
            ax.scatter([i + 0.15] * len(finite), finite, s=12, color="0.55", zorder=2)
            _errorbar(ax, i, estimate(finite), "tab:orange" if arm.name == baseline else "tab:blue")
        ax.set_xticks(range(len(arms)), [a.name for a in arms], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{m} ({'higher' if m in maximize else 'lower'} is better)", fontsize=9)
        if others:
            ax = axes[row + 1, col]
            ax.axhline(0.0, color="0.3", lw=0.8)
            for i, arm in enumerate(others):
                diff = paired_difference(arm, collected.arms[baseline], m)
                _errorbar(ax, i, diff, "tab:red" if diff.excludes_zero() else "tab:blue")
            ax.set_xticks(range(len(others)), [a.name for a in others], rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{m}: arm − {baseline}, paired by seed", fontsize=9)
    fig.suptitle("mean and 95 % CI (Student t) over seeds; grey: each seed; red: interval excludes 0", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _errorbar(ax: Any, x: float, est: Estimate, colour: str) -> None:
    if est.n == 0:
        return
    err = [[est.mean - est.low], [est.high - est.mean]] if est.n >= 2 else None
    ax.errorbar([x], [est.mean], yerr=err, fmt="o", color=colour, capsize=4, zorder=3)


def compare(
    metrics: list[str] | None = None,
    run_dir: Path = Path("runs"),
    tracking_uri: str | None = None,
    experiment: str | None = None,
    stage: str | None = None,
    sweep: str | None = None,
    baseline: str = "baseline",
    claims: Path | None = None,
    maximize: list[str] | None = None,
    out: Path = Path("runs/compare"),
) -> str:
    """Compare ablation arms over seeds (means, 95 % intervals, paired differences, claim verdicts).

    Args:
        metrics: metric keys as logged, e.g. test/a2v/lipsync_corr_syncworld; the claims' metrics are added.
        run_dir: the run directory whose `mlflow.db` is read (unless `tracking_uri`), e.g. a sweep's.
        tracking_uri: any MLflow tracking URI instead.
        experiment: only this MLflow experiment (default: all of them).
        stage: only runs tagged with this stage.
        sweep: only runs tagged with this sweep (`klear sweep` tags its runs with its name).
        baseline: the arm the differences are taken against.
        claims: YAML list of claims: {arm, metric, expect: higher|lower, description, against (optional)}.
        maximize: metrics where higher is better (the tables' arrows); the rest are lower-is-better.
        out: folder for comparison.md, comparison.json and comparison.png.
    """
    if tracking_uri is None and not (Path(run_dir) / "mlflow.db").is_file():
        raise ConfigError(f"run_dir: no mlflow.db in {run_dir} (give the run directory of the runs, or --tracking_uri)")
    claim_list = load_claims(claims) if claims else []
    metrics = list(dict.fromkeys(list(metrics or []) + [c.metric for c in claim_list]))
    if not metrics:
        raise ConfigError("metrics: give at least one metric (or --claims)")
    higher = set(maximize or [])
    unknown = higher - set(metrics)
    if unknown:
        raise ConfigError(f"maximize: names metrics not in --metrics: {sorted(unknown)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a folder")
    from klear_lightning.logging import sqlite_uri  # imports Lightning: only once the arguments passed their checks

    uri = tracking_uri or sqlite_uri(run_dir)
    collected = collect(uri, metrics, experiment, stage, sweep)
    verdicts = [judge(c, collected.arms, baseline) for c in claim_list]
    source = tracking_uri or str(Path(run_dir) / "mlflow.db")  # as given: no absolute local path in the output
    text = markdown(collected, metrics, higher, baseline, verdicts, source)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(text)
    filters = {"experiment": experiment, "stage": stage, "sweep": sweep}
    (out / "comparison.json").write_text(
        json.dumps(report(collected, metrics, baseline, verdicts, source, filters), indent=1) + "\n"
    )
    plot(collected, metrics, higher, baseline, out / "comparison.png")
    print(text, end="")
    return text
