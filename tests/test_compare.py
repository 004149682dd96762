"""`klear compare`: newest run per ablation, best value per metric marked, png written."""

from __future__ import annotations

import math

from mlflow.tracking import MlflowClient

from klear_lightning.compare import best_index, compare
from klear_lightning.logging import sqlite_uri


def test_compare_reads_mlflow_and_marks_best(tmp_path):
    client = MlflowClient(sqlite_uri(tmp_path))
    exp = client.create_experiment("klear")
    runs = [("baseline", 0.50, 0.30, "pretrain"), ("dual_tower", 0.70, 0.40, "pretrain"),
            ("rope_aligned", 0.45, 0.20, "pretrain"), ("rope_aligned", 9.0, 9.0, "quality")]
    for ablation, loss, clap, stage in runs:
        run = client.create_run(exp, tags={"ablation": ablation, "stage": stage})
        client.log_metric(run.info.run_id, "val/loss", loss + 1.0, step=1)
        client.log_metric(run.info.run_id, "val/loss", loss, step=2)
        client.log_metric(run.info.run_id, "val/clap", clap, step=2)
    out = tmp_path / "cmp"
    table = compare(["val/loss", "val/clap", "val/missing"], run_dir=tmp_path, stage="pretrain",
                    maximize=["val/clap"], out=out)
    lines = table.strip().splitlines()
    assert lines[0] == "| ablation | val/loss ↓ | val/clap ↑ | val/missing ↓ |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert set(rows) == {"baseline", "dual_tower", "rope_aligned"}
    assert rows["rope_aligned"][0] == "**0.45**" and rows["baseline"][0] == "0.5"
    assert rows["dual_tower"][1] == "**0.4**"
    assert rows["baseline"][2] == "–"
    assert (out / "comparison.md").read_text() == table
    assert (out / "comparison.png").stat().st_size > 1000


def test_best_index_ignores_nan():
    assert best_index([math.nan, 2.0, 1.0], higher_is_better=False) == 2
    assert best_index([math.nan, 2.0, 1.0], higher_is_better=True) == 1
    assert best_index([math.nan], higher_is_better=True) is None
