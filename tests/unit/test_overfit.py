import torch

from klear_lightning.flow import FlowMatching, flow_loss
from klear_lightning.models import ModelConfig, build_model
from klear_lightning.tasks import TaskBatch
from tests.helpers.batches import make_batch


def test_tiny_model_overfits_one_batch():
    """The real tiny model memorises one mixed-task batch. t and noise are drawn once and kept
    fixed (one FlowSample reused every step), so the target is a fixed function to fit."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", text_dim=16, video_channels=4, audio_channels=6))
    batch = make_batch(b=4)
    tasks = TaskBatch.from_names(["t2av", "ti2v", "t2a", "v2a"])
    fs = FlowMatching().make_inputs(batch, tasks, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        terms = flow_loss(model(fs.inputs), fs)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(terms.total.item())
    assert losses[-1] < losses[0] / 10, f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert terms.video > 0 and terms.audio > 0  # both modalities were supervised
