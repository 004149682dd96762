import importlib.util

import numpy as np
import pytest
import torch

from klear_lightning.metrics import REGISTRY, BuildContext, MetricUnavailable
from klear_lightning.metrics import imagebind as ib


def test_ib_score_is_cosine():
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    expected = [float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(v.numpy(), a.numpy())]
    assert torch.allclose(ib.ib_score(v, a), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    assert float(ib.ib_score(v, 3.0 * v).mean()) == pytest.approx(1.0)


def test_ib_video_frames_crops_and_pairs():
    video = torch.zeros(200, 240, 320, 3, dtype=torch.uint8)  # 8 s at 25 fps
    video[:, :, :100] = 255  # white left band: the left crop differs from the right one
    clips = ib.ib_video(video, 25.0)
    assert clips.shape == (3 * 3, 3, 2, 224, 224)  # 4 frames at 0.5 fps -> 3 pairs, 3 crops each
    left, right = clips[0], clips[2]
    assert left.mean() > right.mean()
    with pytest.raises(ValueError, match="at least 4 s"):
        ib.ib_video(video[:75], 25.0)


def test_ib_audio_three_normalised_clips():
    calls = []

    def fake_melspec(wave, sr, bins, frames):
        calls.append(wave.shape[-1])
        return torch.full((1, bins, frames), -4.268)

    out = ib.ib_audio(torch.zeros(16000 * 8), fake_melspec)
    assert out.shape == (3, 1, 128, 204)
    assert calls == [32000] * 3
    assert torch.allclose(out, torch.zeros_like(out))


def test_ib_builder_needs_checkpoint_then_package(tmp_path):
    with pytest.raises(MetricUnavailable, match="metrics.checkpoints.imagebind"):
        REGISTRY["ib_score_avbench"].build(BuildContext.create({}))
    if importlib.util.find_spec("imagebind") is None:
        (tmp_path / "imagebind_huge.pth").write_bytes(b"")
        with pytest.raises(MetricUnavailable, match="non-commercial"):
            REGISTRY["ib_score_avbench"].build(BuildContext.create({"imagebind": str(tmp_path / "imagebind_huge.pth")}))


def test_malicious_imagebind_weights_are_refused_naming_the_file(tmp_path):
    import os

    from klear_lightning.safe_pickle import UnsafeFileError

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "imagebind_huge.pth"
    torch.save({"w": torch.zeros(1), "x": Exploit()}, path)
    with pytest.raises(UnsafeFileError, match="imagebind_huge.pth"):
        ib.read_imagebind_weights(path)
    assert not (tmp_path / "pwned").exists()
