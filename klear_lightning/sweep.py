"""`klear sweep`: every ablation arm x seed as its own run, resumable, into one MLflow database.

An arm is the base config alone (the baseline, named by its `ablation` value), the base config
with one overlay (named by the overlay's `ablation` value), or a staged arm: an ordered list of
stage overlays (a curriculum), each applied on the base config, all with one `ablation` value.
For each arm and seed the sweep writes the run's whole resolved config to
`<run_dir>/runs/<arm>/seed_<seed>/config.yaml` (a staged arm: one per stage, in `stage1/`,
`stage2/`, ...) and runs, each in its own process, `klear fit` (a staged arm: one per stage, in
order, each starting from the previous stage's final checkpoint through `model.init_from`) and
then `klear test` on the final checkpoint once per scored partition (`test`, `ood`), all logging
into one MLflow run tagged `ablation`, `seed` and `sweep` in `<run_dir>/mlflow.db` (a later stage
continues the step axis of the earlier ones: its logger's `step_offset` is their final global
steps summed). Seed s sets `seed_everything`, `model.seed` and `data.init_args.seed`
(weights, tasks and noise, data order); the dataset itself is the base config's, generated
once before any run when the config asks for SyncWorld and it is missing.

Resuming: `<run>/state.json` records the MLflow run id and the phases that finished (`fit`, or
`stage1`, `stage2`, ..., then the partitions). Rerunning the same command skips finished runs and
finished stages, continues a killed `klear fit` from its own `last.ckpt` in the same MLflow run (a
run killed before its first checkpoint restarts in a fresh MLflow run; the partial one is deleted;
a later stage killed before its first checkpoint restarts that stage in the same MLflow run) and
reruns an unfinished scoring phase. A failed run is reported with its
log and retried by the next invocation; it never stops the others.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from klear_lightning.config_checks import check_config, check_data_config
from klear_lightning.lightning_cli import bootstrap_from_config, instantiate_callbacks, parse_config
from klear_lightning.logging import sqlite_uri

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
LOGGER = "klear_lightning.logging.KlearMLFlowLogger"
CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"


@dataclass(frozen=True)
class Stage:
    """One `klear fit` of an arm: its phase name (`fit` for a plain arm; `stage1`, `stage2`, ... for
    a staged arm, also its folder in the run) and the overlay it adds to the base config."""

    phase: str
    overlay: Path | None  # None: the base config alone


@dataclass(frozen=True)
class Arm:
    name: str  # the resolved config's `ablation`
    stages: tuple[Stage, ...]  # one `fit`, or a staged arm's stage1, stage2, ... in order

    @property
    def staged(self) -> bool:
        return self.stages[0].phase != "fit"

    def source(self, config: Path) -> str:
        """What the arm was given as, for error messages."""
        overlays = [str(s.overlay) for s in self.stages if s.overlay]
        return f"[{', '.join(overlays)}]" if self.staged else overlays[0] if overlays else str(config)


@dataclass
class Run:
    arm: Arm
    seed: int
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed {self.seed}"

    def phases(self, partitions: list[str]) -> list[str]:
        return [s.phase for s in self.arm.stages] + partitions

    def stage(self, phase: str) -> Stage | None:
        """The stage a phase trains; None for a scoring phase."""
        return next((s for s in self.arm.stages if s.phase == phase), None)

    def stage_folder(self, stage: Stage) -> Path:
        return self.folder / stage.phase if self.arm.staged else self.folder

    def checkpoint(self, stage: Stage) -> Path:
        return self.stage_folder(stage) / "checkpoints" / "last.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint(self.arm.stages[-1])

    def step_offset(self, stage: Stage) -> int:
        """The final global steps of the stages before `stage`, summed (they have finished)."""
        before = self.arm.stages[: self.arm.stages.index(stage)]
        return sum(_global_step(self.checkpoint(s)) for s in before)

    def read_state(self) -> dict[str, Any]:
        path = self.folder / "state.json"
        return json.loads(path.read_text()) if path.is_file() else {"run_id": None, "done": []}

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.folder / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.folder / "state.json")


@dataclass
class Outcome:
    run: Run
    ok: bool
    seconds: dict[str, float] = field(default_factory=dict)
    failure: str = ""


def _global_step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def _parse(base: Path, overlay: Path | None, overrides: list[str]) -> tuple[Any, Namespace]:
    args = ["--config", str(base)] + (["--config", str(overlay)] if overlay else []) + list(overrides)
    cli = parse_config(*args)
    return cli.parser, cli.config


def _run_config(parser: Any, cfg: Namespace, run: Run, stage: Stage, run_dir: Path, experiment: str) -> str:
    """The whole config of one stage of a run as YAML: its seed, its folder, its checkpoints, the
    sweep's database; a later stage of a staged arm starts from the previous stage's last.ckpt."""
    cfg = cfg.clone()
    cfg.seed_everything = run.seed
    cfg.model.seed = run.seed
    if "seed" in cfg.data.init_args:
        cfg.data.init_args.seed = run.seed
    index = run.arm.stages.index(stage)
    if index > 0:
        cfg.model.init_from = str(run.checkpoint(run.arm.stages[index - 1]))
    folder = run.stage_folder(stage)
    cfg.trainer.default_root_dir = str(folder)
    cfg.trainer.logger = Namespace(
        class_path=LOGGER,
        init_args=Namespace(
            run_dir=str(run_dir),
            experiment_name=experiment,
            run_name=f"{run.arm.name}-seed{run.seed}",
            tags=None,
            tracking_uri=None,
            run_id=None,
        ),
    )
    callbacks = list(cfg.trainer.callbacks or [])
    checkpoints = [c for c in callbacks if c.class_path == CHECKPOINT]
    if len(checkpoints) > 1:
        raise ValueError(f"--config: klear sweep needs at most one ModelCheckpoint callback, found {len(checkpoints)}")
    if not checkpoints:
        checkpoints = [Namespace(class_path=CHECKPOINT, init_args=Namespace())]
        cfg.trainer.callbacks = callbacks + checkpoints
    checkpoints[0].init_args.dirpath = str(folder / "checkpoints")
    checkpoints[0].init_args.save_last = True
    return parser.dump(cfg, skip_none=False)


def _experiment(cfg: Namespace) -> str:
    logger = cfg.trainer.logger
    init = getattr(logger, "init_args", None) if isinstance(logger, Namespace) else None
    return (init and init.get("experiment_name")) or "klear"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Sweep:
    """Runs the phases of each run in subprocesses, `parallel` runs at a time."""

    def __init__(self, run_dir: Path, name: str, experiment: str, partitions: list[str], parallel: int) -> None:
        from mlflow.tracking import MlflowClient

        self.run_dir, self.name, self.partitions, self.parallel = run_dir, name, partitions, parallel
        self.client = MlflowClient(sqlite_uri(run_dir))
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                experiment, artifact_location=(run_dir.resolve() / "mlartifacts").as_uri()
            )
        )
        threads = max(1, len(os.sched_getaffinity(0)) // parallel)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.threads = threads
        self.stop = threading.Event()
        self.procs: set[subprocess.Popen] = set()
        self.mlflow_lock = threading.Lock()
        self.log_path = run_dir / "sweep.log"

    def say(self, line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        print(stamped, flush=True)
        with self.log_path.open("a") as f:
            f.write(stamped + "\n")

    def finished(self, run: Run) -> bool:
        done = run.read_state()["done"]
        return all(p in done for p in run.phases(self.partitions))

    def _mark_finished(self, run: Run) -> None:
        """A run with every phase done is FINISHED in MLflow (what `klear compare` counts), also when a
        phase it no longer runs (e.g. a partition dropped from `--partitions`) failed in an earlier sweep."""
        run_id = run.read_state()["run_id"]
        if run_id and self.client.get_run(run_id).info.status != "FINISHED":
            self.client.set_terminated(run_id, "FINISHED")
            self.say(f"{run.label}: every phase done; its MLflow run (status was not FINISHED) marked FINISHED")

    def _start_mlflow_run(self, run: Run, state: dict[str, Any]) -> str:
        """The run's MLflow run: the one it started in when it has a finished stage or a checkpoint
        to resume from, else a new one (a partial run without either is deleted: it restarts from
        scratch)."""
        with self.mlflow_lock:
            if state["run_id"] and (state["done"] or any(run.checkpoint(s).is_file() for s in run.arm.stages)):
                return state["run_id"]
            if state["run_id"]:
                self.client.delete_run(state["run_id"])
            tags = {"ablation": run.arm.name, "seed": str(run.seed), "sweep": self.name}
            created = self.client.create_run(self.experiment_id, run_name=f"{run.arm.name}-seed{run.seed}", tags=tags)
            return created.info.run_id

    def command(self, run: Run, phase: str, run_id: str) -> list[str]:
        """`klear fit` of a stage (from its own last.ckpt when it has one), or `klear test` of the
        last stage's final checkpoint on partition `phase`."""
        stage = run.stage(phase)
        config = run.stage_folder(stage or run.arm.stages[-1]) / "config.yaml"
        args = [
            sys.executable,
            "-m",
            "klear_lightning.cli",
            "fit" if stage else "test",
            "--config",
            str(config),
            "--trainer.logger.init_args.run_id",
            run_id,
        ]
        if run.arm.staged:
            offset = run.step_offset(stage or run.arm.stages[-1])
            args += ["--trainer.logger.init_args.step_offset", str(offset)]
        if stage is None:
            args += ["--ckpt_path", str(run.last_checkpoint), "--data.init_args.test_partition", phase]
            if run.arm.staged:  # the reports next to the run's other files, as for a plain arm
                args += ["--trainer.default_root_dir", str(run.folder)]
        elif run.checkpoint(stage).is_file():
            args += ["--ckpt_path", str(run.checkpoint(stage))]
        return args

    def _lock(self, run: Run) -> int | None:
        """Hold the run's lock (its subprocesses inherit it, so a run whose sweep was killed keeps it
        until it ends); None when the sweep is stopping."""
        fd = os.open(run.folder / "lock", os.O_RDWR | os.O_CREAT)
        said = False
        while not self.stop.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not said:
                    self.say(f"{run.label}: still running from an earlier sweep process; waiting for it")
                    said = True
                time.sleep(2)
        os.close(fd)
        return None

    def execute(self, run: Run) -> Outcome:
        outcome = Outcome(run, ok=False)
        fd = self._lock(run)
        if fd is None:
            outcome.failure = "not started: the sweep was stopped"
            return outcome
        try:
            state = run.read_state()
            for phase in run.phases(self.partitions):
                if phase in state["done"]:
                    continue
                if self.stop.is_set():
                    outcome.failure = f"{phase} not started: the sweep was stopped"
                    return outcome
                stage = run.stage(phase)
                if stage is not None:
                    checkpoint = run.checkpoint(stage)
                    resume = checkpoint.is_file()
                    state["run_id"] = self._start_mlflow_run(run, state)
                    run.write_state(state)
                    self.say(
                        f"start {run.label}"
                        + (f" {phase}" if run.arm.staged else "")
                        + (f" (resuming from step {_global_step(checkpoint)})" if resume else "")
                    )
                log = (run.stage_folder(stage) / "fit.log") if stage else run.folder / f"{phase}.log"
                args = self.command(run, phase, state["run_id"])
                started = time.monotonic()
                with log.open("a") as f:
                    f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(args)}\n")
                    f.flush()
                    proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=self.env, pass_fds=(fd,))
                    self.procs.add(proc)
                    code = proc.wait()
                    self.procs.discard(proc)
                outcome.seconds[phase] = time.monotonic() - started
                if code != 0:
                    outcome.failure = f"{phase} exited with {code}: {log}"
                    return outcome
                if stage is not None and run.arm.staged:  # the MLflow params are the first stage's
                    with self.mlflow_lock:
                        self.client.log_artifact(state["run_id"], str(log.parent / "config.yaml"), phase)
                state["done"].append(phase)
                run.write_state(state)
            outcome.ok = True
            return outcome
        finally:
            os.close(fd)

    def run_all(self, runs: list[Run]) -> list[Outcome]:
        """Run `runs` `parallel` at a time, with a progress line per finished run."""
        todo = []
        for run in runs:  # each run's state.json read once
            if self.finished(run):
                self._mark_finished(run)
            else:
                todo.append(run)
        total, done = len(runs), len(runs) - len(todo)
        self.say(
            f"sweep {self.name}: {total} runs, {done} done, {len(todo)} to run, {self.parallel} at a time "
            f"with {self.threads} torch thread(s) each; logs in {self.run_dir}/runs/<arm>/seed_<seed>/"
        )
        outcomes: list[Outcome] = []
        times: list[float] = []
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        pool = ThreadPoolExecutor(self.parallel)
        try:
            pending: set[Future] = {pool.submit(self.execute, r) for r in todo}
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    out = future.result()
                    outcomes.append(out)
                    took = sum(out.seconds.values())
                    phases = ", ".join(f"{p} {_duration(s)}" for p, s in out.seconds.items())
                    if out.ok:
                        done += 1
                        times.append(took)
                        left = total - done - sum(not o.ok for o in outcomes)
                        mean = sum(times) / len(times)
                        eta = mean * left / self.parallel
                        self.say(
                            f"[{done}/{total} done, {left} left] {out.run.label}: done in {_duration(took)} "
                            f"({phases}); {_duration(mean)} per run, about {_duration(eta)} to go"
                        )
                    else:
                        self.say(f"FAILED {out.run.label}: {out.failure}")
        except KeyboardInterrupt:
            self.stop.set()
            for proc in list(self.procs):
                proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            self.say("interrupted (SIGINT or SIGTERM); the running runs were stopped")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            pool.shutdown(wait=True)
        return outcomes


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _arm(overlay: Path | list[Path]) -> Arm:
    """An `--overlays` item as an arm (named once its configs are parsed): one overlay, or a
    nested list of stage overlays."""
    if not isinstance(overlay, list):
        return Arm("", (Stage("fit", Path(overlay)),))
    if len(overlay) < 2:
        raise ValueError(
            f"--overlays: a staged arm (a nested list) needs at least two stage overlays, got {overlay}; "
            "give a single overlay as a plain item"
        )
    return Arm("", tuple(Stage(f"stage{k}", Path(o)) for k, o in enumerate(overlay, 1)))


@dataclass
class SweepResult:
    runs: int
    failed: list[str]


def sweep(
    config: Path,
    overlays: list[Path | list[Path]] | None = None,
    seeds: list[int] | None = None,
    run_dir: Path = Path("runs/sweep"),
    parallel: int = 1,
    baseline: bool = True,
    overrides: list[str] | None = None,
    partitions: list[str] | None = None,
    name: str | None = None,
) -> SweepResult:
    """Run every ablation arm x seed as its own run (fit, then scoring), resumably.

    Args:
        config: the base config (the baseline arm, named by its `ablation` value).
        overlays: ablation overlays; each is applied on `config` and names its arm with `ablation`.
            A nested list is a staged arm (a curriculum): its overlays are stages, each applied on
            `config` and trained in order, each from the previous stage's final checkpoint (the sweep
            sets `model.init_from`), the last one scored; e.g.
            '[t2v_only.yaml, [stage1.yaml, stage2.yaml, stage3.yaml]]'.
        seeds: seeds per arm; seed s sets seed_everything, model.seed and data.init_args.seed.
        run_dir: holds mlflow.db, sweep.log and runs/<arm>/seed_<seed>/ (config, logs, checkpoints).
        parallel: runs at a time; each gets the machine's cores / parallel torch threads.
        baseline: also run the base config alone as an arm.
        overrides: `--key=value` arguments applied to every run after the configs, e.g.
            '[--trainer.max_steps=200]'.
        partitions: partitions scored after training with `klear test`, each into the same MLflow run
            under its own prefix (`test/...`, `ood/...`); default [test, ood].
        name: the `sweep` tag (default: the name of run_dir).
    """
    seeds = [0] if seeds is None else list(seeds)
    overlays = list(overlays or [])
    partitions = ["test", "ood"] if partitions is None else list(partitions)
    overrides = list(overrides or [])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: give distinct seeds, got {seeds}")
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    if not baseline and not overlays:
        raise ValueError("--overlays: nothing to run (no overlays and --baseline false)")
    arms = ([Arm("", (Stage("fit", None),))] if baseline else []) + [_arm(o) for o in overlays]
    for path in [config] + [s.overlay for arm in arms for s in arm.stages if s.overlay]:
        if not Path(path).is_file():
            raise ValueError(f"config file not found: {path}")
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        raise ValueError(f"--overrides: each item must be one '--key=value', got {bad}")
    shown = Path(run_dir)  # as given (relative stays relative in the printed compare command)
    run_dir = shown.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    name = name or run_dir.name
    if not NAME.match(name):
        raise ValueError(f"--name: {name!r} must match {NAME.pattern} (it is an MLflow tag compare filters on)")
    lock = os.open(run_dir / "sweep.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"error: another klear sweep is running in {run_dir}") from None

    parsed: list[tuple[Arm, list[tuple[Any, Namespace]]]] = []  # per arm: (parser, config) per stage
    for arm in arms:
        stages = []
        for k, stage in enumerate(arm.stages):
            parser, cfg = _parse(Path(config), stage.overlay, overrides)
            if k > 0:
                cfg.model.init_from = None  # set per run to the previous stage's last.ckpt (not there yet)
            check_config(cfg)
            instantiate_callbacks(cfg)  # a bad callback argument fails here, not in every run's fit
            bootstrap_from_config(cfg)  # the base data seed: every seed sees the same dataset
            check_data_config(cfg)
            stages.append((parser, cfg))
        ablations = list(dict.fromkeys(str(cfg.ablation) for _, cfg in stages))
        if len(ablations) > 1:
            raise ValueError(
                f"{arm.source(config)}: the stages of a staged arm must share one `ablation`, got {ablations}"
            )
        parsed.append((Arm(ablations[0], arm.stages), stages))
    names = [a.name for a, _ in parsed]
    for arm, _ in parsed:
        if not NAME.match(arm.name):
            raise ValueError(
                f"{arm.source(config)}: ablation {arm.name!r} must match {NAME.pattern} (it names a folder)"
            )
        if names.count(arm.name) > 1:
            raise ValueError(
                f"{arm.source(config)}: ablation {arm.name!r} names two arms; give each overlay its own `ablation`"
            )
    experiment = _experiment(parsed[0][1][0][1])

    runs = []
    for seed in seeds:  # seed-major: every arm's seed 0 first, so a partial sweep is already a comparison
        for arm, stages in parsed:
            run = Run(arm, seed, run_dir / "runs" / arm.name / f"seed_{seed}")
            for stage, (parser, cfg) in zip(arm.stages, stages):
                text = _run_config(parser, cfg, run, stage, run_dir, experiment)
                path = run.stage_folder(stage) / "config.yaml"
                if path.is_file() and path.read_text() != text:
                    raise ValueError(
                        f"{path}: this run was started with a different config; use another --run_dir "
                        "or restore the configs it was started with"
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            runs.append(run)

    engine = Sweep(run_dir, name, experiment, partitions, parallel)
    try:
        outcomes = engine.run_all(runs)
    except KeyboardInterrupt:
        raise SystemExit(
            f"interrupted: rerun the same command to continue; {run_dir}/sweep.log has the progress"
        ) from None
    failed = [f"{o.run.label}: {o.failure}" for o in outcomes if not o.ok]
    complete = sum(engine.finished(r) for r in runs)
    engine.say(f"sweep {name}: {complete} of {len(runs)} runs done" + (f", {len(failed)} failed:" if failed else ""))
    for line in failed:
        engine.say(f"  {line}")
    if failed:
        engine.say("rerun the same command to retry the failed runs")
    metrics = ", ".join(f"{p}/loss" for p in partitions) or "val/loss"
    engine.say(
        f"compare the arms: klear compare --run_dir {shown} --sweep {name} "
        f"--baseline {names[0] if baseline else '<arm>'} --metrics '[{metrics}]' [--claims claims.yaml] "
        f"--out {shown / 'compare'}"
    )
    os.close(lock)
    return SweepResult(len(runs), failed)
