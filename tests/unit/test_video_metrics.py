import argparse
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from klear_lightning.media import MediaClip
from klear_lightning.metrics import (
    REGISTRY,
    BuildContext,
    MetricUnavailable,
    aesthetic,
    identity,
    motion,
)
from klear_lightning.metrics.nets import aesthetic as aesthetic_net
from klear_lightning.metrics.nets import dino
from klear_lightning.metrics.suite import MetricsConfig, MetricSuite
from klear_lightning.safe_pickle import UnsafeFileError


def _translating(dx: float, dy: float, frames: int = 4, h: int = 96, w: int = 128) -> torch.Tensor:
    """A smooth textured pattern moving by (dx, dy) pixels per frame, uint8 (T, H, W, 3)."""
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    out = []
    for t in range(frames):
        x, y = xs - dx * t, ys - dy * t
        v = (
            0.5
            + 0.2 * torch.sin(2 * math.pi * x / 23) * torch.cos(2 * math.pi * y / 17)
            + 0.15 * torch.sin(2 * math.pi * (x + y) / 31)
            + 0.1 * torch.cos(2 * math.pi * (x - 2 * y) / 13)
        )
        out.append(v)
    grey = (torch.stack(out).clamp(0, 1) * 255).round().to(torch.uint8)
    return grey[..., None].expand(-1, -1, -1, 3).contiguous()


@pytest.mark.parametrize("dx,dy", [(1.0, 0.0), (1.5, 0.5), (3.0, -2.0)])
def test_flow_recovers_known_translation(dx, dy):
    grey = motion.grey_frames(_translating(dx, dy, frames=2), 96)
    flow = motion.optical_flow(grey[:1], grey[1:])
    mean = flow[0, :, 16:-16, 16:-16].mean((1, 2))
    assert mean[0] == pytest.approx(dx, abs=0.1) and mean[1] == pytest.approx(dy, abs=0.1)
    assert motion.motion_magnitude(_translating(dx, dy), size=96) == pytest.approx(math.hypot(dx, dy), rel=0.06)


def test_motion_metric_static_is_zero_and_scales_with_resolution():
    metric = REGISTRY["motion_hs256"].build(BuildContext.create({}))
    still = _translating(0.0, 0.0)
    moving = _translating(2.0, 0.0)
    metric.update([MediaClip(video=still, fps=8.0, audio=None, sample_rate=16000)])
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-4)
    # at short side 256 (input short side 96) a 2 px shift reads as 2 * 256 / 96 px
    assert motion.motion_magnitude(moving) == pytest.approx(2.0 * 256 / 96, rel=0.08)
    with pytest.raises(ValueError, match="at least 2 frames"):
        motion.motion_magnitude(still[:1])


def _dino_checkpoint(tmp_path, dim=64, depth=2, image_size=32):
    net = dino.DinoViT(dim=dim, depth=depth, heads=1, patch=16, image_size=image_size)
    torch.nn.init.normal_(net.pos_embed, std=0.02)
    torch.nn.init.normal_(net.cls_token, std=0.02)
    state = {f"module.backbone.{k}": v for k, v in net.state_dict().items()}
    state["module.head.last_layer.weight"] = torch.zeros(3, 3)  # DINO training heads are dropped
    torch.save({"teacher": state}, tmp_path / "dino.pth")
    torch.save(net.state_dict(), tmp_path / "dino_plain.pth")
    return net.eval()


def test_dino_loads_official_layouts_and_interpolates_positions(tmp_path):
    net = _dino_checkpoint(tmp_path)
    a = dino.load_dino(tmp_path / "dino.pth", head_dim=64)
    b = dino.load_dino(tmp_path / "dino_plain.pth", head_dim=64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a(x), net(x), atol=1e-5) and torch.allclose(b(x), net(x), atol=1e-5)
        assert a(torch.randn(1, 3, 64, 48)).shape == (1, 64)  # positional table resized to 4 x 3
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.1.mlp.fc2.bias",
        "norm.weight",
    } <= set(net.state_dict())


def test_identity_consistency_through_registry(tmp_path):
    _dino_checkpoint(tmp_path)
    with pytest.raises(MetricUnavailable, match="metrics.checkpoints.dino"):
        REGISTRY["id_dino_cls"].build(BuildContext.create({}))
    metric = REGISTRY["id_dino_cls"].build(BuildContext.create({"dino": str(tmp_path / "dino.pth")}))
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 256, (1, 40, 40, 3), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 256, (3, 40, 40, 3), generator=g, dtype=torch.uint8)
    same = MediaClip(video=ref.expand(3, -1, -1, -1), fps=8.0, audio=None, sample_rate=16000)
    mixed = MediaClip(video=torch.cat([ref, other]), fps=8.0, audio=None, sample_rate=16000)
    reference = MediaClip(video=ref, fps=8.0, audio=None, sample_rate=16000)
    metric.update([same], [reference])
    assert float(metric.compute()) == pytest.approx(1.0, abs=1e-5)
    metric.update([mixed], [reference])
    with torch.no_grad():
        feats = metric.features(mixed.video)
    expected = (1.0 + F.cosine_similarity(feats, feats[:1]).mean().item()) / 2
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-5)
    assert int(metric.n) == 2


def test_aesthetic_head_and_clip_through_registry(tmp_path):
    from tests.helpers.nets import save_tiny_aesthetic

    clip_dir, head_path = save_tiny_aesthetic(tmp_path)
    clip, head = aesthetic_net.load_clip_vision(clip_dir), aesthetic_net.load_aesthetic_head(head_path)
    assert [k for k in head.state_dict() if k.endswith("weight")] == [
        "layers.0.weight",
        "layers.2.weight",
        "layers.4.weight",
        "layers.6.weight",
        "layers.7.weight",
    ]
    with pytest.raises(MetricUnavailable, match="clip_vision"):
        REGISTRY["aesthetic_laion"].build(BuildContext.create({"aesthetic_head": str(tmp_path / "head.pth")}))
    ctx = BuildContext.create({"clip_vision": str(tmp_path / "clip"), "aesthetic_head": str(tmp_path / "head.pth")})
    metric = REGISTRY["aesthetic_laion"].build(ctx)
    video = torch.randint(0, 256, (20, 36, 48, 3), dtype=torch.uint8)
    metric.update([MediaClip(video=video, fps=8.0, audio=None, sample_rate=16000)])
    frames = video[torch.linspace(0, 19, 8).round().long()]
    with torch.no_grad():
        emb = clip(pixel_values=aesthetic.clip_inputs(frames, 32)).image_embeds
        expected = head(emb / emb.norm(dim=-1, keepdim=True)).mean()
    assert float(metric.compute()) == pytest.approx(float(expected), abs=1e-5)


def test_clip_inputs_normalisation():
    white = torch.full((1, 10, 10, 3), 255, dtype=torch.uint8)
    x = aesthetic.clip_inputs(white, 8)
    expected = (1 - torch.tensor(aesthetic.CLIP_MEAN)) / torch.tensor(aesthetic.CLIP_STD)
    assert torch.allclose(x[0, :, 4, 4], expected, atol=1e-4)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_dino_parity_with_official_code():
    from benchmarks.parity import dino as dino_parity

    result = dino_parity.check()
    assert result.passed, result


def test_dino_training_checkpoint_loads_and_malicious_is_refused(tmp_path):
    net = dino.DinoViT(dim=32, depth=1, heads=2)
    teacher = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "args": argparse.Namespace(arch="vit_small")}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # argparse.Namespace: what plain weights-only refuses
    assert dino.load_dino(path).cls_token.shape == (1, 1, 32)
    marker = tmp_path / "ran"
    torch.save({"teacher": teacher, "args": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeFileError, match=str(path)):
        dino.load_dino(path)
    suite = MetricSuite(MetricsConfig(metrics=["id_dino_cls"], checkpoints={"dino": str(path)}, tasks=["ti2v"]))
    assert "metrics.checkpoints.dino" in suite.skipped["id_dino_cls"] and str(path) in suite.skipped["id_dino_cls"]
    assert not marker.exists()


def _tiny_dinov3(directory):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_register_tokens=4
    )
    model = DINOv3ViTModel(config).eval()
    model.save_pretrained(directory)
    return model


def test_dinov3_versebench_uses_token_minus_two_of_224_square_frames(tmp_path):
    model = _tiny_dinov3(tmp_path / "dinov3")
    metric = REGISTRY["id_dinov3_versebench"].build(BuildContext.create({"dinov3": str(tmp_path / "dinov3")}))
    g = torch.Generator().manual_seed(5)
    gen = MediaClip(
        video=torch.randint(0, 256, (3, 48, 80, 3), generator=g, dtype=torch.uint8),
        fps=8.0,
        audio=None,
        sample_rate=16000,
    )
    ref = MediaClip(
        video=torch.randint(0, 256, (2, 48, 80, 3), generator=g, dtype=torch.uint8),
        fps=8.0,
        audio=None,
        sample_rate=16000,
    )
    metric.update([gen], [ref])
    with torch.no_grad():
        hidden_gen = model(pixel_values=identity.dinov3_inputs(gen.video)).last_hidden_state
        hidden_ref = model(pixel_values=identity.dinov3_inputs(ref.video[:1])).last_hidden_state
    assert hidden_gen.shape[1] == 1 + 4 + 14 * 14  # CLS, registers, 224 / 16 squared patches
    expected = F.cosine_similarity(hidden_gen[:, -2], hidden_ref[:, -2], dim=-1).mean()
    assert float(metric.compute()) == pytest.approx(float(expected), rel=1e-5)
    cls = F.cosine_similarity(hidden_gen[:, 0], hidden_ref[:, 0], dim=-1).mean()
    assert float(cls) != pytest.approx(float(expected), rel=1e-3)
    x = identity.dinov3_inputs(torch.full((1, 30, 90, 3), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, 224, 224)  # squashed, not cropped
    assert torch.allclose(
        x[0, :, 0, 0], (1 - torch.tensor(identity.IMAGENET_MEAN)) / torch.tensor(identity.IMAGENET_STD)
    )


def test_dinov3_directory_without_safetensors_is_not_computed(tmp_path):
    (tmp_path / "dinov3").mkdir()
    _tiny_dinov3(tmp_path / "dinov3")
    (tmp_path / "dinov3" / "model.safetensors").unlink()
    suite = MetricSuite(
        MetricsConfig(
            metrics=["id_dinov3_versebench"], checkpoints={"dinov3": str(tmp_path / "dinov3")}, tasks=["ti2v"]
        )
    )
    assert "metrics.checkpoints.dinov3" in suite.skipped["id_dinov3_versebench"]


def test_raft_parity_with_official_code():
    from benchmarks.parity import raft as raft_parity

    result = raft_parity.check()
    assert result.passed, result


def test_versebench_motion_resize_and_padding():
    video = torch.zeros(1, 700, 1300, 3, dtype=torch.uint8)
    video[:, :, 650:] = 255
    x = motion.versebench_resize(video)
    assert x.shape == (1, 3, 175, 325)  # halved twice: 1300 -> 650 -> 325 (both sides together)
    assert x.dtype == torch.float32 and set(x.unique().tolist()) <= set(range(256))
    assert motion.versebench_resize(video[:, :640, :640]).shape == (1, 3, 640, 640)  # 640 is not halved
    padded = motion.pad_to_eight(torch.arange(5 * 6.0).view(1, 1, 5, 6))
    assert padded.shape == (1, 1, 8, 8)
    assert padded[0, 0, 1:6, 1:7].equal(torch.arange(5 * 6.0).view(5, 6))  # 3 rows: 1 above, 2 below
    assert padded[0, 0, 0, 1:7].equal(padded[0, 0, 1, 1:7]) and padded[0, 0, 7].equal(padded[0, 0, 6])


def test_motion_raft_versebench_through_registry_and_malicious_weights(tmp_path, monkeypatch):
    from benchmarks.parity.seeded import seeded_fan_in_state_dict
    from klear_lightning.metrics.nets import raft

    net = raft.RAFT()
    path = tmp_path / "raft-things.pth"
    torch.save(seeded_fan_in_state_dict({f"module.{k}": v for k, v in net.state_dict().items()}, 7), path)
    metric = REGISTRY["motion_raft_versebench"].build(BuildContext.create({"raft": str(path)}))
    monkeypatch.setattr(motion, "VERSEBENCH_ITERS", 2)  # 20 in the protocol: cut for CPU time
    g = torch.Generator().manual_seed(6)
    clip = MediaClip(
        video=torch.randint(0, 256, (2, 126, 130, 3), generator=g, dtype=torch.uint8),
        fps=8.0,
        audio=None,
        sample_rate=16000,
    )
    metric.update([clip])
    flows = motion.raft_flows(raft.load_raft(path), motion.versebench_resize(clip.video), iters=2)
    assert flows.shape == (1, 2, 128, 136)
    assert float(metric.compute()) == pytest.approx(float(flows.abs().mean()), rel=1e-5)
    marker = tmp_path / "ran"
    state = net.state_dict()
    state["extra"] = _Payload(str(marker))
    torch.save(state, path)
    with pytest.raises(UnsafeFileError, match=str(path)):
        raft.load_raft(path)
    suite = MetricSuite(
        MetricsConfig(metrics=["motion_raft_versebench"], checkpoints={"raft": str(path)}, tasks=["t2v"])
    )
    assert "metrics.checkpoints.raft" in suite.skipped["motion_raft_versebench"]
    assert not marker.exists()


def test_aesthetic_v25_parity_with_the_package():
    from benchmarks.parity import aesthetic_v25 as aesthetic_parity

    result = aesthetic_parity.check()
    assert result.passed, result


def test_aesthetic_v25_versebench_through_registry_and_malicious_head(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    tower = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
    ).eval()
    tower.save_pretrained(tmp_path / "siglip")
    head = aesthetic_net.AestheticV25Head(32).eval()
    torch.save(head.state_dict(), tmp_path / "aesthetic_predictor_v2_5.pth")
    checkpoints = {"siglip": str(tmp_path / "siglip"), "aesthetic_v25": str(tmp_path / "aesthetic_predictor_v2_5.pth")}
    metric = REGISTRY["aesthetic_v25_versebench"].build(BuildContext.create(checkpoints))
    g = torch.Generator().manual_seed(8)
    clips = [
        MediaClip(
            video=torch.randint(0, 256, (n, 40, 60, 3), generator=g, dtype=torch.uint8),
            fps=8.0,
            audio=None,
            sample_rate=16000,
        )
        for n in (3, 1)
    ]
    metric.update(clips)
    with torch.no_grad():
        per_clip = []
        for clip in clips:  # every frame, 56 x 56 here (the tower's size), normalised pooled embedding
            pooled = tower(pixel_values=aesthetic.siglip_inputs(clip.video, 56)).pooler_output
            per_clip.append(float(head(F.normalize(pooled, dim=-1)).mean()) / 10)
    assert float(metric.compute()) == pytest.approx(sum(per_clip) / 2, rel=1e-5)
    marker = tmp_path / "ran"
    state = head.state_dict()
    state["extra"] = _Payload(str(marker))
    torch.save(state, tmp_path / "aesthetic_predictor_v2_5.pth")
    with pytest.raises(UnsafeFileError, match="aesthetic_predictor_v2_5.pth"):
        aesthetic_net.load_aesthetic_v25_head(tmp_path / "aesthetic_predictor_v2_5.pth")
    suite = MetricSuite(MetricsConfig(metrics=["aesthetic_v25_versebench"], checkpoints=checkpoints, tasks=["t2v"]))
    assert "metrics.checkpoints.aesthetic_v25" in suite.skipped["aesthetic_v25_versebench"]
    assert not marker.exists()
