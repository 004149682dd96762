import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from klear_lightning.models import ModelConfig, build_model
from klear_lightning.models.inputs import InputShape, random_inputs
from klear_lightning.sequence import ClipSpec, LatentGeometry, SequenceSpec
from klear_lightning.summary import stream_tokens, summarize, training_flops
from klear_lightning.tasks import TaskBatch

SEQ = SequenceSpec(ClipSpec(), LatentGeometry(4, 4, 8, False, 3, 500), video_patch=2, audio_patch=2)


def tiny(**overrides) -> ModelConfig:
    base = dict(dim=32, depth=2, heads=2, text_dim=24, video_channels=4, audio_channels=3, video_patch=2, audio_patch=2)
    return ModelConfig.preset("tiny", **{**base, **overrides})


@pytest.mark.parametrize("arch", ["single_tower", "dual_tower"])
def test_last_line_is_the_parameter_count(arch: str):
    cfg = tiny(architecture=arch)
    text = summarize(cfg, SEQ, text_tokens=6)
    expected = sum(p.numel() for p in build_model(cfg).parameters())
    assert text.splitlines()[-1] == f"parameters: {expected}"


def test_token_counts_per_stream():
    text = summarize(tiny(), SEQ, text_tokens=6)
    block = text.split("tokens per sample:\n")[1].split("parameters per component")[0]
    lines = dict(line.split() for line in block.splitlines())
    # clip 2 s @ 8 fps, 32x32, 16 kHz; video codec /4 in time, /8 in space; audio hop 500; patches 2.
    assert lines["video"] == str(4 * 2 * 2)
    assert lines["audio"] == str(64 // 2)
    assert lines["video_text"] == "6" and lines["audio_text"] == "6"


def test_paper_summary_on_meta_device_is_26b():
    seq = SequenceSpec(
        ClipSpec(duration=5.12, fps=25, height=480, width=832, sample_rate=48000),
        LatentGeometry(16, 8, 16, False, 64, 1024),
        video_patch=2,
        audio_patch=1,
    )
    text = summarize(ModelConfig.preset("paper"), seq, text_tokens=256)
    n = int(text.splitlines()[-1].removeprefix("parameters: "))
    assert abs(n - 26e9) <= 0.1 * 26e9


def test_mismatched_sequence_is_rejected():
    with pytest.raises(ValueError, match="^model.net.video_patch: 1, but the sequence / codecs give 2"):
        summarize(tiny(video_patch=1), SEQ)


@pytest.mark.parametrize("arch", ["single_tower", "dual_tower"])
def test_matmul_flops_match_a_measured_forward(arch: str):
    cfg = tiny(architecture=arch)
    model = build_model(cfg)
    shape = InputShape(SEQ.video_latent_frames, SEQ.video_latent_hw, SEQ.audio_latent_frames, 6)
    x = random_inputs(cfg, TaskBatch.from_names(["t2av"]), shape, torch.Generator().manual_seed(0), pad=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    # the counter sees linear layers (and two tiny pooling einsums), not the CPU attention kernel
    counted = counter.get_total_flops()
    estimated = training_flops(model, stream_tokens(SEQ, 6))["matmul"] / 3
    assert abs(counted - estimated) / estimated < 0.01


def test_memory_lines_end_with_the_peak_before_the_parameter_count():
    from klear_lightning.summary import GIB, TrainingLayout, memory_per_rank, sharded_bytes

    layout = TrainingLayout(world_size=4, batch_size=2)
    lines = summarize(tiny(), SEQ, text_tokens=6, layout=layout).splitlines()
    assert lines[-1].startswith("parameters: ") and lines[-2].startswith("peak_memory_per_rank_gib: ")
    with torch.device("meta"):
        model = build_model(tiny())
    exact = sharded_bytes(model, 4)
    peak = memory_per_rank(model, stream_tokens(SEQ, 6), layout)["peak"]
    assert float(lines[-2].split()[1]) == pytest.approx(peak / GIB, abs=0.006)
    assert peak > sum(exact.values())


def test_sharded_bytes_split_the_model_over_ranks():
    from klear_lightning.summary import sharded_bytes

    with torch.device("meta"):
        model = build_model(ModelConfig.preset("paper"))
    n = sum(p.numel() for p in model.parameters())
    one = sharded_bytes(model, 1)
    assert one["parameters"] == one["gradients"] == 4 * n
    assert one["optimizer"] == 8 * n + 4 * len(list(model.parameters()))
    ranks = [sharded_bytes(model, 128, r)["parameters"] for r in (0, 127)]
    assert sum(sharded_bytes(model, 128, r)["parameters"] for r in range(128)) == 4 * n
    assert ranks[0] >= ranks[1] and ranks[0] <= 4 * n / 128 * 1.01


def test_activation_checkpointing_lowers_the_activation_estimate():
    from klear_lightning.summary import TrainingLayout, memory_per_rank

    with torch.device("meta"):
        model = build_model(tiny())
    tokens = stream_tokens(SEQ, 6)
    on = memory_per_rank(model, tokens, TrainingLayout(activation_checkpointing=True))
    off = memory_per_rank(model, tokens, TrainingLayout(activation_checkpointing=False))
    assert on["activations_checkpointed"] < on["activations_full"] == off["activations_full"]
    assert off["peak"] - on["peak"] == on["activations_full"] - on["activations_checkpointed"]
    double = memory_per_rank(model, tokens, TrainingLayout(batch_size=2, activation_checkpointing=False))
    assert double["activations_full"] == 2 * off["activations_full"]
