"""FSDP2 construction on 2 CPU processes (gloo): meta device -> parallelize -> materialize.

One `torchrun` of tests/helpers/sharded_worker.py per world size; see that file for what each rank writes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from klear_lightning.models import build_model
from tests.helpers import ROOT, subprocess_env
from tests.helpers.sharded_worker import tiny

SEED = 3


def _torchrun(out: Path, world: int, *extra: str) -> list[dict]:
    env = subprocess_env()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(world),
        "--standalone",
        str(ROOT / "tests" / "helpers" / "sharded_worker.py"),
        "--out",
        str(out),
        "--seed",
        str(SEED),
        *extra,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(tiny()).state_dict()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded")
    # the previous stage's weights, as a `.ckpt` file and as a sharded folder written by another layout
    import torch.distributed.checkpoint as dcp

    previous = _weights(SEED + 1)
    torch.save({"state_dict": {f"model.{k}": v for k, v in previous.items()}}, out / "init_from.ckpt")
    folder = {k: v * 2 for k, v in previous.items()}
    dcp.save({"state_dict": {f"model.{k}": v for k, v in folder.items()}}, checkpoint_id=out / "init_from.dcp")
    return _torchrun(out, 2)


@pytest.mark.slow
def test_sharded_initial_weights_equal_the_unsharded_build(two_ranks, tmp_path):
    want = _weights(SEED)
    want_rng = torch.rand(4)
    one = _torchrun(tmp_path, 1, "--big_dim", "0")
    for result in (*two_ranks, *one):
        assert result["init"].keys() == want.keys()
        for name, value in want.items():
            assert torch.equal(result["init"][name], value), name
        assert torch.equal(result["rng_after"], want_rng), "the global generator must end in the same state"


@pytest.mark.slow
def test_init_from_file_and_sharded_folder_into_the_sharded_model(two_ranks):
    previous = _weights(SEED + 1)
    for result in two_ranks:
        for name, value in previous.items():
            assert torch.equal(result["init_from_file"][name], value), name
            assert torch.equal(result["init_from_folder"][name], 2 * value), name


@pytest.mark.slow
def test_no_rank_holds_the_whole_model_while_building(two_ranks):
    for result in two_ranks:
        # a whole copy alone would be model_bytes; each rank may grow by its half plus one block
        assert result["local_param_bytes"] <= 0.51 * result["model_bytes"]
        assert result["rss_growth"] < 0.7 * result["model_bytes"], (result["rss_growth"], result["model_bytes"])


@pytest.mark.slow
def test_summary_sharded_bytes_equal_the_real_tensors(two_ranks):
    for rank, result in enumerate(two_ranks):
        assert result["estimate"] == result["bytes"], rank
    assert two_ranks[0]["bytes"] != two_ranks[1]["bytes"], "uneven shards: ranks must differ somewhere"
