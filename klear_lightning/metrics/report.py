"""`klear test` report: report.json and report.md.

First the paper's Table 1 layout (MS, AS, ID, FD, KL, CLAP, WER, AV-A, SNC, then MOS and IB of Tables 2
and 3; `metrics.table1`): one cell per row and column, from the paper's protocol where that metric ran,
else from another protocol and then marked "†"; one protocol line per column. Then every metric, rows
are tasks (and `ground_truth`, the decoded ground truth scored the same way), columns grouped video /
audio / TTS / AV-consistency. A cell is the value with its N, "n/a" where the metric does not apply to
the task, or "not computed" (reasons listed under the table) where its extractor is not configured, its
weights failed to load or its formula was undefined.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from klear_lightning.metrics.base import GROUPS
from klear_lightning.metrics.suite import MetricSuite
from klear_lightning.metrics.table1 import TABLE1, find_key

GROUP_TITLES = {"video": "Video", "audio": "Audio", "tts": "TTS", "av": "AV consistency"}


@dataclass(frozen=True)
class ReportColumn:
    metric: str
    key: str
    label: str
    group: str
    higher_is_better: bool | None
    not_computed: str | None = None


def report_columns(suite: MetricSuite) -> list[ReportColumn]:
    """Columns in group order, then config order; a skipped metric is one 'not computed' column."""
    columns: list[ReportColumn] = []
    for group in GROUPS:
        for name, spec in suite.specs.items():
            if spec.group != group:
                continue
            if name in suite.skipped:
                columns.append(ReportColumn(name, name, name, group, None, suite.skipped[name]))
                continue
            columns.extend(ReportColumn(name, c.key, c.label, group, c.higher_is_better) for c in suite.columns[name])
    return columns


def build_report(suite: MetricSuite, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready report: columns, per-task results (value, n, protocol), reasons."""
    results, undefined = suite.compute()
    columns = report_columns(suite)
    tasks: dict[str, dict[str, Any]] = {}
    for task in suite.rows:
        row: dict[str, Any] = {}
        for col in columns:
            if col.not_computed is not None:
                row[col.key] = {"status": "not computed", "reason": col.not_computed}
            elif col.key in results.get(task, {}):
                row[col.key] = {"status": "ok", **asdict(results[task][col.key])}
            elif (task, col.metric) in undefined:
                row[col.key] = {"status": "not computed", "reason": undefined[(task, col.metric)]}
            else:
                row[col.key] = {"status": "n/a", "reason": f"{col.metric} does not apply to {task}"}
        tasks[task] = row
    return {
        "context": context or {},
        "columns": [asdict(c) for c in columns],
        "tasks": tasks,
        "skipped": dict(suite.skipped),
        "table1": table1(tasks),
    }


def table1(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """row -> Table-1 label -> {key, value, n, protocol, paper_protocol} or {status, reason}."""
    out: dict[str, dict[str, Any]] = {}
    for task, row in tasks.items():
        cells: dict[str, Any] = {}
        ok = {k: c for k, c in row.items() if c["status"] == "ok"}
        for column in TABLE1:
            found = find_key(column, ok)
            if found is not None:
                key, paper = found
                cell = ok[key]
                cells[column.label] = {
                    "status": "ok",
                    "key": key,
                    "value": cell["value"],
                    "n": cell["n"],
                    "protocol": cell["protocol"],
                    "paper_protocol": paper,
                }
                continue
            tried = find_key(column, row)
            reason = row[tried[0]].get("reason", "") if tried else "no metric for this column is configured"
            cells[column.label] = {"status": "not computed", "reason": reason}
        out[task] = cells
    return out


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def report_markdown(report: dict[str, Any]) -> str:
    columns = [ReportColumn(**c) for c in report["columns"]]
    header = ["Task"]
    for c in columns:
        arrow = "" if c.higher_is_better is None else (" ↑" if c.higher_is_better else " ↓")
        header.append(f"{GROUP_TITLES[c.group]}: {c.label}{arrow}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: dict[str, int] = {}
    for task, row in report["tasks"].items():
        cells = [task]
        for c in columns:
            cell = row[c.key]
            if cell["status"] == "ok":
                cells.append(f"{_fmt(cell['value'])} (N={cell['n']})")
            elif cell["status"] == "n/a":
                cells.append("n/a")
            else:
                idx = notes.setdefault(cell["reason"], len(notes) + 1)
                cells.append(f"not computed [{idx}]")
        lines.append("| " + " | ".join(cells) + " |")
    protocols = {}
    for row in report["tasks"].values():
        for key, cell in row.items():
            if cell["status"] == "ok":
                protocols[key] = cell["protocol"]
    out = ["# Benchmark report", ""]
    out += [f"- {k}: {v}" for k, v in report["context"].items()]
    out += ["", *table1_markdown(report.get("table1", {})), "## All metrics", "", *lines, ""]
    if notes:
        out += ["Not computed:", ""] + [f"[{i}] {reason}" for reason, i in notes.items()] + [""]
    if protocols:
        out += ["Protocols:", ""] + [f"- `{k}`: {v}" for k, v in protocols.items()] + [""]
    return "\n".join(out)


def table1_markdown(table: dict[str, dict[str, Any]]) -> list[str]:
    """The Table-1 layout: values (N), "†" where computed under another protocol than the paper's."""
    if not table:
        return []
    labels = [c.label for c in TABLE1]
    lines = ["## Table 1 layout", "", "| Row | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    used: dict[str, tuple[str, str, bool]] = {}
    for row, cells in table.items():
        out = [row]
        for label in labels:
            cell = cells[label]
            if cell["status"] == "ok":
                out.append(f"{_fmt(cell['value'])}{'' if cell['paper_protocol'] else ' †'} (N={cell['n']})")
                used.setdefault(label, (cell["key"], cell["protocol"], cell["paper_protocol"]))
            else:
                out.append("not computed")
        lines.append("| " + " | ".join(out) + " |")
    lines += ["", "† computed under another protocol than the paper's.", "", "Protocol per column:", ""]
    for column in TABLE1:
        if column.label in used:
            key, protocol, paper = used[column.label]
            mark = "" if paper else f" † (the paper's: {column.paper_protocol})"
            lines.append(f"- {column.label}: `{key}`: {protocol}{mark}")
        else:
            lines.append(f"- {column.label}: not computed (the paper's: {column.paper_protocol})")
    return lines + [""]


def write_report(report: dict[str, Any], directory: Path, stem: str = "report") -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `directory` (created); returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False))
    md_path.write_text(report_markdown(report))
    return json_path, md_path
