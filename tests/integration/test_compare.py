"""`klear compare` over seeds, on synthetic MLflow runs with known values: means, Student t intervals
(one checked by hand), differences paired by seed, claim verdicts, the three output files; every user
error is one `error: <field>: ...` line with status 2 through the real entry point."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from klear_lightning.cli import main
from klear_lightning.compare import estimate
from klear_lightning.logging import sqlite_uri
from tests.helpers import ROOT, klear, only_error_line

T_975_2DOF = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (tables: 4.303)

# metric m per arm and seed. `better` is baseline + (1.0, 1.2, 0.8): its own interval overlaps the
# baseline's, but the paired differences (mean 1, sd 0.2) exclude 0. `same` differs by (0.5, -0.5, 0.1).
VALUES = {
    "baseline": {0: 1.0, 1: 2.0, 2: 3.0},
    "better": {0: 2.0, 1: 3.2, 2: 3.8},
    "same": {0: 1.5, 1: 1.5, 2: 3.1},
    "lonely": {0: 9.0},
    "partial": {1: 2.5, 2: 2.0, 5: 7.0},  # pairs with the baseline on seeds 1 and 2 only
}


def _run(client, exp, ablation, seed, value, start, status="FINISHED", stage="pretrain", other=None):
    run = client.create_run(
        exp, start_time=start, tags={"ablation": ablation, "seed": str(seed), "stage": stage, "sweep": "s"}
    )
    client.log_metric(run.info.run_id, "m", value + 10.0, step=1)
    client.log_metric(run.info.run_id, "m", value, step=2)  # the last logged value counts
    if other is not None:
        client.log_metric(run.info.run_id, "other", other, step=2)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(sqlite_uri(root))
    exp = client.create_experiment("klear")
    start = 1_000
    # interleave arms and seeds in time, seeds in reverse, so neither order nor position pairs them
    for seed in (5, 2, 1, 0):
        for ablation, values in VALUES.items():
            if seed in values:
                start += 1
                _run(client, exp, ablation, seed, values[seed], start, other=float(seed))
    _run(client, exp, "better", 1, -50.0, 10)  # an older run of (better, 1): the newer one counts
    _run(client, exp, "better", 3, 100.0, start + 1, status="RUNNING")  # unfinished: left out
    _run(client, exp, "better", 4, 100.0, start + 2, status="FAILED")
    _run(client, exp, "baseline", 0, 100.0, start + 3, stage="quality")  # filtered by --stage
    return root


def _claims(path, items):
    import yaml

    path.write_text(yaml.safe_dump(items))
    return path


def test_compare_over_seeds_intervals_and_verdicts(runs, tmp_path, capsys):
    claims = _claims(
        tmp_path / "claims.yaml",
        [
            {"arm": "better", "metric": "m", "expect": "higher", "description": "better beats the baseline"},
            {"arm": "better", "metric": "m", "expect": "lower", "description": "better is worse"},
            {"arm": "same", "metric": "m", "expect": "higher", "description": "same is better"},
            {"arm": "lonely", "metric": "m", "expect": "higher", "description": "one seed"},
            {"arm": "baseline", "against": "better", "metric": "m", "expect": "lower", "description": "reversed pair"},
            {"arm": "absent", "metric": "m", "expect": "higher", "description": "no such arm"},
        ],
    )
    out = tmp_path / "cmp"
    main(
        [
            "compare",
            "--run_dir",
            str(runs),
            "--stage",
            "pretrain",
            "--metrics",
            "[other]",
            "--claims",
            str(claims),
            "--maximize",
            "[m]",
            "--out",
            str(out),
        ]
    )
    data = json.loads((out / "comparison.json").read_text())
    assert data["interval"]["method"] == "student_t" and data["baseline"] == "baseline"
    assert data["metrics"] == ["other", "m"]  # claims' metrics added
    assert data["left_out"] == {"RUNNING": 1, "FAILED": 1} and data["replaced_runs"] == 1

    # By hand: baseline m = 1, 2, 3: mean 2, sd 1, half width 4.3027 / sqrt(3) = 2.4841.
    base = data["arms"]["baseline"]["metrics"]["m"]
    assert (base["n"], base["mean"], base["sd"]) == (3, 2.0, 1.0)
    assert base["low"] == pytest.approx(2.0 - 2.48414, abs=1e-5) and base["high"] == pytest.approx(4.48414, abs=1e-5)
    assert base["values"] == {"0": 1.0, "1": 2.0, "2": 3.0}
    # Paired: better - baseline = 1.0, 1.2, 0.8: mean 1, sd 0.2, half width 4.3027 * 0.2 / sqrt(3) = 0.49683.
    diff = data["differences"]["better"]["m"]
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(1.0) and diff["sd"] == pytest.approx(0.2)
    assert diff["low"] == pytest.approx(1.0 - T_975_2DOF * 0.2 / math.sqrt(3)) == pytest.approx(0.50317, abs=1e-5)
    better = data["arms"]["better"]["metrics"]["m"]
    assert better["low"] < base["high"], "the arms' own intervals overlap; only the pairing separates them"
    partial = data["differences"]["partial"]["m"]
    assert (partial["n"], partial["mean"]) == (2, pytest.approx(-0.25))  # (2.5 - 2) and (2 - 3)
    assert data["differences"]["lonely"]["m"]["n"] == 1 and data["differences"]["lonely"]["m"]["low"] is None

    verdicts = {c["description"]: (c["verdict"], c["difference"]["n"]) for c in data["claims"]}
    assert verdicts == {
        "better beats the baseline": ("reproduced", 3),
        "better is worse": ("refuted", 3),
        "same is better": ("unresolved", 3),
        "one seed": ("unresolved", 1),
        "reversed pair": ("reproduced", 3),
        "no such arm": ("unresolved", 0),
    }

    md = (out / "comparison.md").read_text()
    assert md == capsys.readouterr().out
    assert "Student t" in md and "paired by seed" in md
    assert "| better beats the baseline | better − baseline | m | higher | 1 [0.503, 1.5] (3) | **reproduced** |" in md
    assert "| baseline | 0, 1, 2 | 1 [−1.48, 3.48] (3) | 2 [−0.484, 4.48] (3) |" in md
    assert "| lonely | 0 | 0 (1) | 9 (1) |" in md
    assert "**1 [0.503, 1.5] (3)**" in md  # differences table: bold where the interval excludes 0
    assert "left out (not finished): 1 failed, 1 running" in md
    assert (out / "comparison.png").stat().st_size > 10_000


def test_single_runs_and_filters(runs, tmp_path):
    """Today's use (one run per arm, no seeds) still works: means with n = 1 and no interval."""
    out = tmp_path / "one"
    main(["compare", "--run_dir", str(runs), "--stage", "quality", "--metrics", "[m]", "--out", str(out)])
    md = (out / "comparison.md").read_text()
    assert "| baseline | 0 | 100 (1) |" in md
    assert "## Claims" not in md


def _bad_input(tmp_path, runs):
    """(arguments after `klear compare`, the error line expected), one per kind of user error."""
    bad_expect = _claims(tmp_path / "expect.yaml", [{"arm": "a", "metric": "m", "expect": "up", "description": "d"}])
    missing_key = _claims(tmp_path / "missing.yaml", [{"arm": "a", "metric": "m", "expect": "higher"}])
    (tmp_path / "broken.yaml").write_text("- arm: [a\n")
    (tmp_path / "a_file").write_text("")
    run = ["--run_dir", str(runs)]
    return {
        "no_database": (
            ["--run_dir", str(tmp_path), "--metrics", "[m]"],
            f"error: run_dir: no mlflow.db in {tmp_path} ",
        ),
        "no_metric": ([*run], "error: metrics: give at least one metric (or --claims)"),
        "maximize": (
            [*run, "--metrics", "[m]", "--maximize", "[n]"],
            "error: maximize: names metrics not in --metrics: ['n']",
        ),
        "no_runs": ([*run, "--metrics", "[m]", "--stage", "nope"], "error: stage: no finished runs in "),
        "experiment": (
            [*run, "--metrics", "[m]", "--experiment", "nope"],
            "error: experiment: no MLflow experiment named 'nope'",
        ),
        "claims_missing": (
            [*run, "--claims", str(tmp_path / "none.yaml")],
            f"error: claims: no file at {tmp_path / 'none.yaml'}",
        ),
        "claims_yaml": (
            [*run, "--claims", str(tmp_path / "broken.yaml")],
            f"error: claims: {tmp_path / 'broken.yaml'} is not valid YAML",
        ),
        "claims_expect": (
            [*run, "--claims", str(bad_expect)],
            f"error: claims: {bad_expect}: item 0: expect must be one of",
        ),
        "claims_keys": (
            [*run, "--claims", str(missing_key)],
            f"error: claims: {missing_key}: item 0: missing ['description']",
        ),
        "out_is_file": ([*run, "--metrics", "[m]", "--out", str(tmp_path / "a_file")], "error: out: "),
        "argument": ([*run, "--metrics", "[m]", "--nope", "1"], "error: --nope: unrecognized argument"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "no_database",
        "no_metric",
        "maximize",
        "no_runs",
        "experiment",
        "claims_missing",
        "claims_yaml",
        "claims_expect",
        "claims_keys",
        "out_is_file",
        "argument",
    ],
)
def test_user_errors_are_one_line_through_the_entry_point(runs, tmp_path, kind):
    args, expected = _bad_input(tmp_path, runs)[kind]
    line = only_error_line(klear("compare", *args, cwd=tmp_path))
    assert line.startswith(expected), line


def test_estimate_edge_cases():
    assert estimate([]).n == 0 and math.isnan(estimate([]).mean)
    one = estimate([2.0, math.nan])
    assert (one.n, one.mean) == (1, 2.0) and math.isnan(one.low)
    flat = estimate([1.0, 1.0, 1.0])
    assert (flat.low, flat.high) == (1.0, 1.0) and flat.excludes_zero()


@pytest.mark.parametrize("name, partition", [("claims.yaml", "test"), ("claims_ood.yaml", "ood")])
def test_the_study_claims_name_its_arms_and_the_keys_klear_test_logs(name, partition):
    """configs/research/claims.yaml parses, names arms that configs/research/ defines and metric keys
    that `klear test` logs with the research baseline's benchmark; claims_ood.yaml makes the same claims
    on the `ood` partition's keys."""

    import yaml

    from klear_lightning.compare import load_claims
    from klear_lightning.metrics.syncworld import SyncWorldEventOffset, SyncWorldLipSync
    from klear_lightning.metrics.wer import whisper_wer

    research = ROOT / "configs" / "research"
    claims = load_claims(research / name)
    on_test = load_claims(research / "claims.yaml")
    assert [(c.arm, c.against, c.metric.replace("test/", f"{partition}/", 1), c.expect) for c in on_test] == [
        (c.arm, c.against, c.metric, c.expect) for c in claims
    ]
    base = yaml.safe_load((research / "baseline.yaml").read_text())
    arms = {base["ablation"]} | {
        yaml.safe_load(p.read_text())["ablation"] for p in (research / "ablations").rglob("*.yaml")
    }
    assert {c.arm for c in claims} | {c.against for c in claims if c.against} <= arms
    compared = {c.arm for c in claims} | {c.against for c in claims if c.against}
    assert compared == arms - {"baseline", "paper_tasks", "original_scene"}, "every study arm is claimed"
    benchmark = next(c for c in base["trainer"]["callbacks"] if c["class_path"].endswith("BenchmarkCallback"))
    tasks = benchmark["init_args"]["metrics"]["tasks"]
    keys = {col.key for metric in (SyncWorldEventOffset, SyncWorldLipSync) for col in metric.columns}
    keys.add(whisper_wer(None, "tiny_en").columns[0].key)  # the default Whisper (tiny.en)
    for claim in claims:
        if claim.metric.split("/")[1].startswith("loss"):
            assert claim.metric in (f"{partition}/{k}" for k in ("loss", "loss_video", "loss_audio")), claim
        else:
            prefix, task, key = claim.metric.split("/")
            assert prefix == partition and task in tasks and key in keys, claim
