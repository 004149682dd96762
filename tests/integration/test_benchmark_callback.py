import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from klear_lightning.callbacks.benchmark import BenchmarkCallback
from klear_lightning.media import MediaClip
from klear_lightning.metrics.suite import MetricsConfig
from klear_lightning.sampling import SamplerConfig
from klear_lightning.streams import AVBatch
from klear_lightning.tasks import Role, get_task


def make_batch(indices: list[int]) -> AVBatch:
    b = len(indices)
    idx = torch.tensor(indices, dtype=torch.float32)
    audio = (idx[:, None, None] + 1) * torch.linspace(-0.1, 0.1, 16).reshape(1, 2, 8)
    return AVBatch(
        video=torch.zeros(b, 2, 1, 2, 2),
        video_mask=torch.ones(b, 1, dtype=torch.bool),
        audio=audio,
        audio_mask=torch.ones(b, 8, dtype=torch.bool),
        video_text=torch.zeros(b, 3, 4),
        video_text_mask=torch.ones(b, 3, dtype=torch.bool),
        audio_text=torch.zeros(b, 3, 4),
        audio_text_mask=torch.ones(b, 3, dtype=torch.bool),
        meta=[{"key": f"clip{i}"} for i in indices],
    )


class FakeModule(L.LightningModule):
    """Test double: 'generates' half the ground-truth audio, so metric values are known."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.val_sampler = SamplerConfig(steps=50, audio_guidance=2.0)
        self.calls: list[tuple[str, int, int, float, list[str]]] = []
        self.reference_calls = 0

    def training_step(self, batch, batch_idx):
        return self.layer(torch.ones(1, 1)).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def test_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def _clips(self, batch: AVBatch, scale: float, task: str | None) -> list[MediaClip]:
        recipe = get_task(task) if task else None
        has_video = recipe is None or recipe.video is not Role.ABSENT
        has_audio = recipe is None or recipe.audio is not Role.ABSENT
        return [
            MediaClip(
                video=torch.zeros(2, 4, 4, 3, dtype=torch.uint8) if has_video else None,
                fps=8.0,
                audio=batch.audio[i].flatten() * scale if has_audio else None,
                sample_rate=16000,
                meta=batch.meta[i],
            )
            for i in range(batch.batch_size)
        ]

    def generate(self, batch, task, sampler):
        self.calls.append((task, sampler.steps, sampler.seed, sampler.audio_guidance, [m["key"] for m in batch.meta]))
        return self._clips(batch, 0.5, task)

    def reference_media(self, batch):
        self.reference_calls += 1
        return self._clips(batch, 1.0, None)


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    name = "recording"
    version = 0

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def loader(n: int) -> DataLoader:
    return DataLoader(list(range(n)), batch_size=3, collate_fn=make_batch)


def expected_values(n: int) -> tuple[float, float]:
    batch = make_batch(list(range(n)))
    peak = (batch.audio.flatten(1).abs().amax(1) * 0.5).mean().item()
    gap = (batch.audio.flatten(1).abs().mean(1) * 0.5).mean().item()
    return peak, gap


def trainer(tmp_path, callback, logger, epochs: int = 2) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        limit_train_batches=1,
        num_sanity_val_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_validation_scores_a_fixed_subset_at_the_interval(tmp_path, test_metrics):
    cfg = MetricsConfig(
        metrics=["peak_test", "gap_test", "weights_test"],
        tasks=["t2a", "t2v"],
        clips_per_task=4,
        sampling_steps=7,
        seed=123,
    )
    module, logger = FakeModule(), RecordingLogger()
    callback = BenchmarkCallback(cfg, every_n_val_epochs=2)
    trainer(tmp_path, callback, logger, epochs=4).fit(module, loader(5), loader(7))

    logged = [(step, m) for step, m in logger.records if any(k.startswith("val/") for k in m)]
    assert len(logged) == 2  # validation epochs 2 and 4 only; never the sanity check
    peak, gap = expected_values(4)
    for _, metrics in logged:
        assert metrics["val/t2a/peak_test"] == pytest.approx(peak, rel=1e-5)
        assert metrics["val/t2a/gap_test"] == pytest.approx(gap, rel=1e-5)
        assert metrics["val/t2a/peak_test_n"] == 4
        assert not any(k.startswith("val/t2v/") for k in metrics)  # audio metrics do not apply to t2v
    # the first four clips, both tasks, the configured steps and seed, guidance kept from the module
    assert len(module.calls) == 2 * 2 * 2
    assert module.calls[:4] == [
        ("t2a", 7, 123, 2.0, ["clip0", "clip1", "clip2"]),
        ("t2v", 7, 123, 2.0, ["clip0", "clip1", "clip2"]),
        ("t2a", 7, 123, 2.0, ["clip3"]),
        ("t2v", 7, 123, 2.0, ["clip3"]),
    ]
    assert module.calls[:4] == module.calls[4:]
    assert callback.suite.skipped == {"weights_test": "set metrics.checkpoints.fake_net to a fake checkpoint"}


def test_ground_truth_is_scored_once_and_logged_at_every_validation(tmp_path, test_metrics):
    cfg = MetricsConfig(metrics=["peak_test"], tasks=["t2a"], clips_per_task=4, sampling_steps=2)
    module, logger = FakeModule(), RecordingLogger()
    trainer(tmp_path, BenchmarkCallback(cfg), logger, epochs=3).fit(module, loader(5), loader(7))

    logged = [m for _, m in logger.records if any(k.startswith("val/") for k in m)]
    assert len(logged) == 3
    peak, _ = expected_values(4)
    for metrics in logged:  # the ground truth is the unscaled audio: twice the generated peak
        assert metrics["val/ground_truth/peak_test"] == pytest.approx(2 * peak, rel=1e-5)
        assert metrics["val/ground_truth/peak_test_n"] == 4
        assert metrics["val/t2a/peak_test"] == pytest.approx(peak, rel=1e-5)
    assert module.reference_calls == 2  # the two kept batches, decoded at the first validation only

    module, logger = FakeModule(), RecordingLogger()
    cfg_off = MetricsConfig(
        metrics=["peak_test"], tasks=["t2a"], clips_per_task=4, sampling_steps=2, ground_truth=False
    )
    trainer(tmp_path, BenchmarkCallback(cfg_off), logger, epochs=1).fit(module, loader(5), loader(7))
    assert not any(k.startswith("val/ground_truth/") for _, m in logger.records for k in m)
    assert module.reference_calls == 0  # peak_test needs no reference: nothing decoded


def test_test_run_writes_report_and_mlflow_artifacts(tmp_path, test_metrics):
    from lightning.pytorch.loggers import MLFlowLogger

    cfg = MetricsConfig(
        metrics=["weights_test", "peak_test", "gap_test"], tasks=["t2a", "t2v"], test_clips_per_task=None
    )
    logger = MLFlowLogger(
        experiment_name="bench",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
    )
    callback = BenchmarkCallback(cfg)
    t = trainer(tmp_path, callback, logger)
    t.test(FakeModule(), loader(5))

    peak, gap = expected_values(5)
    assert t.callback_metrics["test/t2a/peak_test"].item() == pytest.approx(peak, rel=1e-5)
    report_dir = tmp_path
    report = json.loads((report_dir / "report.json").read_text())
    assert report["tasks"]["t2a"]["gap_test"]["n"] == 5
    assert report["tasks"]["t2a"]["weights_test"]["status"] == "not computed"
    assert report["tasks"]["ground_truth"]["peak_test"]["value"] == pytest.approx(2 * peak, rel=1e-5)
    assert "| ground_truth |" in (report_dir / "report.md").read_text()
    assert "not computed [1]" in (report_dir / "report.md").read_text()
    artifacts = {a.path for a in logger.experiment.list_artifacts(logger.run_id)}
    assert artifacts == {"report.json", "report.md"}


def test_report_names_the_tested_checkpoints_step(tmp_path, test_metrics):
    cfg = MetricsConfig(metrics=["peak_test"], tasks=["t2a"], sampling_steps=2)
    t = trainer(tmp_path, BenchmarkCallback(cfg), False, epochs=3)
    t.fit(FakeModule(), loader(3), loader(3))
    t.save_checkpoint(tmp_path / "three.ckpt")

    callback = BenchmarkCallback(cfg)
    tester = trainer(tmp_path / "test", callback, False)
    tester.test(FakeModule(), loader(3), ckpt_path=str(tmp_path / "three.ckpt"))
    assert callback.last_report["context"]["global_step"] == 3
    assert callback.last_report["context"]["checkpoint"].endswith("three.ckpt")


def test_module_without_generate_is_rejected_before_work(tmp_path, test_metrics):
    class NoGenerate(FakeModule):
        generate = None

    callback = BenchmarkCallback(MetricsConfig(metrics=["peak_test"], tasks=["t2a"]))
    with pytest.raises(TypeError, match="NoGenerate.generate"):
        trainer(tmp_path, callback, False).test(NoGenerate(), loader(3))


def split_batch(indices: list[int], splits: list[str]) -> AVBatch:
    batch = make_batch(indices)
    for meta, split in zip(batch.meta, splits):
        meta["split"] = split
    return batch


def test_keep_clips_bounds_each_split_and_the_total(test_metrics):
    from klear_lightning.callbacks.benchmark import keep_clips

    kept: list[AVBatch] = []
    keep_clips(kept, split_batch([0, 1, 2, 3], ["sound", "sound", "sound", "speech"]), limit=5, per_split=2)
    keep_clips(kept, split_batch([4, 5, 6, 7], ["speech", "speech", "singing", "singing"]), limit=5, per_split=2)
    keep_clips(kept, split_batch([8], ["multi"]), limit=5, per_split=2)
    assert [m["key"] for b in kept for m in b.meta] == ["clip0", "clip1", "clip3", "clip4", "clip6"]
    # the rows travel with their tensors (audio scales with the clip index in make_batch)
    assert torch.equal(kept[1].audio, make_batch([4, 6]).audio)
    unbounded: list[AVBatch] = []
    keep_clips(unbounded, split_batch([0, 1, 2], ["a", "a", "a"]), limit=None, per_split=None)
    assert unbounded[0].batch_size == 3
    with pytest.raises(ValueError, match="metrics.clips_per_split"):
        MetricsConfig(metrics=["peak_test"], tasks=["t2a"], clips_per_split=0)


def test_validation_subset_takes_clips_per_split(tmp_path, test_metrics):
    cfg = MetricsConfig(metrics=["peak_test"], tasks=["t2a"], clips_per_task=3, clips_per_split=1, sampling_steps=2)
    module = FakeModule()
    splits = ["sound", "sound", "sound", "speech", "speech", "singing", "singing"]
    val = DataLoader(list(range(7)), batch_size=3, collate_fn=lambda ix: split_batch(ix, [splits[i] for i in ix]))
    trainer(tmp_path, BenchmarkCallback(cfg), RecordingLogger(), epochs=1).fit(module, loader(3), val)
    # batches [0 1 2] [3 4 5] [6]: one sound clip from the first, speech and singing from the second
    assert [keys for *_, keys in module.calls] == [["clip0"], ["clip3", "clip5"]]
