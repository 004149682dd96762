import pytest
import torch

from klear_lightning.tasks import PAPER_TASKS, TASKS, Role, TaskBatch, TaskSampler


def test_recipes_match_the_paper_table():
    assert TASKS["t2v"].generated == ("video",)
    assert TASKS["t2a"].generated == ("audio",)
    assert TASKS["t2av"].generated == ("video", "audio")
    assert TASKS["t2a"].video is Role.ABSENT and TASKS["t2a"].video_text is Role.ABSENT
    assert TASKS["t2v"].audio is Role.ABSENT and TASKS["t2v"].audio_text is Role.ABSENT
    assert TASKS["ti2v"].first_frame_condition and TASKS["ti2av"].first_frame_condition
    assert not any(TASKS[n].first_frame_condition for n in ("t2v", "t2a", "t2av"))
    assert TASKS["v2a"].video is Role.CONDITION and TASKS["a2v"].audio is Role.CONDITION
    assert set(PAPER_TASKS) <= set(TASKS)


def test_task_batch_roles():
    tb = TaskBatch.from_names(["t2v", "t2a", "ti2av"])
    assert tb.roles["video"].tolist() == [2, 0, 2]
    assert tb.roles["audio_text"].tolist() == [0, 1, 1]
    assert tb.first_frame_condition.tolist() == [False, False, True]
    assert tb.is_("audio", Role.GENERATE).tolist() == [False, True, True]


def test_sampler_respects_weights():
    sampler = TaskSampler({"t2v": 1.0, "t2a": 3.0, "t2av": 0.0})
    g = torch.Generator().manual_seed(0)
    draws = sampler.sample(20000, generator=g)
    assert "t2av" not in draws
    frac = draws.count("t2a") / len(draws)
    assert abs(frac - 0.75) < 0.02


@pytest.mark.parametrize(
    "weights, field",
    [
        ({"t2x": 1.0}, "t2x"),
        ({"t2v": 0.0, "t2a": 0.0}, "all weights are zero"),
        ({"t2v": -1.0}, "task_weights.t2v"),
        ({}, "task_weights"),
    ],
)
def test_sampler_rejects_bad_weights(weights, field):
    with pytest.raises(ValueError, match=field):
        TaskSampler(weights)
