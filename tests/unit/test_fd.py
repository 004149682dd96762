import numpy as np
import pytest
import scipy.linalg
import torch

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, Column, MetricUndefined
from klear_lightning.metrics.fd import FrechetDistance, PairwiseEmbeddingDistance, frechet_distance
from klear_lightning.metrics.suite import load_registry

D = 6


@pytest.fixture(scope="module")
def panns_checkpoint(tmp_path_factory):
    """Randomly initialised Cnn14 saved in the official layout: {"model": state_dict}."""
    from klear_lightning.metrics.nets.cnn14 import Cnn14

    torch.manual_seed(0)
    model = Cnn14()
    for m in model.modules():  # non-trivial BatchNorm statistics, as a trained network has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("panns") / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path


def scipy_fd(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula, computed independently with numpy / scipy.linalg.sqrtm."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def clips_from(features: np.ndarray) -> list[MediaClip]:
    return [MediaClip(video=None, fps=8.0, audio=torch.from_numpy(f).float(), sample_rate=16000) for f in features]


def identity_features(clips):
    return torch.stack([c.audio for c in clips]).double()


def make_metric() -> FrechetDistance:
    return FrechetDistance(identity_features, D, Column("fd_test", "FD", False), protocol="test")


@pytest.mark.parametrize("n", [4, 40])
def test_frechet_distance_matches_scipy_sqrtm(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, D)) @ rng.normal(size=(D, D))
    y = rng.normal(loc=0.7, size=(n, D)) * 2.0
    mu1, mu2 = torch.tensor(x.mean(0)), torch.tensor(y.mean(0))
    s1, s2 = torch.tensor(np.cov(x, rowvar=False)), torch.tensor(np.cov(y, rowvar=False))
    ours = float(frechet_distance(mu1, s1, mu2, s2))
    assert ours == pytest.approx(scipy_fd(x, y), rel=1e-6, abs=1e-6)


def test_frechet_metric_accumulates_moments_over_updates():
    rng = np.random.default_rng(0)
    gen = rng.normal(size=(30, D)).astype(np.float32)
    ref = (rng.normal(size=(30, D)) + 0.5).astype(np.float32)
    metric = make_metric()
    for lo, hi in ((0, 7), (7, 19), (19, 30)):
        metric.update(clips_from(gen[lo:hi]), clips_from(ref[lo:hi]))
    result = metric.results()["fd_test"]
    assert result.n == 30
    assert result.value == pytest.approx(scipy_fd(gen.astype(np.float64), ref.astype(np.float64)), rel=1e-5)


def test_frechet_states_merge_like_ranks():
    rng = np.random.default_rng(1)
    gen, ref = rng.normal(size=(20, D)).astype(np.float32), rng.normal(size=(20, D)).astype(np.float32)
    whole, rank0, rank1 = make_metric(), make_metric(), make_metric()
    whole.update(clips_from(gen), clips_from(ref))
    rank0.update(clips_from(gen[:11]), clips_from(ref[:11]))
    rank1.update(clips_from(gen[11:]), clips_from(ref[11:]))
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(float(whole.compute()), rel=1e-9)
    assert int(rank0.n) == 20


def test_frechet_refuses_fewer_than_two_clips():
    metric = make_metric()
    metric.update(clips_from(np.zeros((1, D), np.float32)), clips_from(np.ones((1, D), np.float32)))
    with pytest.raises(MetricUndefined, match="at least 2"):
        metric.compute()


def test_frechet_needs_matching_reference():
    metric = make_metric()
    with pytest.raises(ValueError, match="reference"):
        metric.update(clips_from(np.zeros((2, D), np.float32)))
    with pytest.raises(ValueError, match="2 generated clips but 1 reference"):
        metric.update(clips_from(np.zeros((2, D), np.float32)), clips_from(np.zeros((1, D), np.float32)))


def test_pairwise_distance_is_mean_squared_distance_of_unit_vectors():
    gen = np.array([[1.0, 0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0, 0]], np.float32)
    ref = np.array([[0, 3.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0]], np.float32)
    metric = PairwiseEmbeddingDistance(identity_features, Column("fd_pair", "FD", False), protocol="test")
    metric.update(clips_from(gen), clips_from(ref))
    # pair 1 orthogonal unit vectors: |a - b|^2 = 2; pair 2 identical directions: 0.
    assert float(metric.compute()) == pytest.approx(1.0)


def test_fd_panns_unconfigured_is_unavailable_with_one_line():
    from klear_lightning.metrics.base import MetricUnavailable

    spec = load_registry()["fd_panns_avbench"]
    with pytest.raises(MetricUnavailable, match=r"set metrics\.checkpoints\.panns to .*Cnn14"):
        spec.build(BuildContext.create({}))


def test_fd_panns_scores_through_saved_checkpoint(panns_checkpoint):
    spec = load_registry()["fd_panns_avbench"]
    metric = spec.build(BuildContext.create({"panns": str(panns_checkpoint)}))
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(16000, generator=g) * 0.1 for _ in range(3)]
    clips = [MediaClip(None, 8.0, w, 16000) for w in waves]
    metric.update(clips, clips)
    result = metric.results()["fd_panns_avbench"]
    assert result.n == 3
    assert abs(result.value) < 1e-3  # identical sets: distance zero up to float error


def test_cnn14_state_dict_has_the_official_layout():
    from klear_lightning.metrics.nets.cnn14 import Cnn14

    shapes = {k: tuple(v.shape) for k, v in Cnn14().state_dict().items()}
    assert shapes["spectrogram_extractor.stft.conv_real.weight"] == (257, 1, 512)
    assert shapes["spectrogram_extractor.stft.conv_imag.weight"] == (257, 1, 512)
    assert shapes["logmel_extractor.melW"] == (257, 64)
    assert shapes["bn0.running_var"] == (64,)
    assert shapes["conv_block1.conv1.weight"] == (64, 1, 3, 3)
    assert shapes["conv_block6.bn2.weight"] == (2048,)
    assert shapes["fc1.weight"] == (2048, 2048)
    assert shapes["fc_audioset.weight"] == (527, 2048)
    assert len(shapes) == 2 + 1 + 5 + 6 * 12 + 4


def test_cnn14_front_end_is_the_power_stft():
    from klear_lightning.metrics.nets.cnn14 import Cnn14

    wave = torch.randn(2, 4000)
    ours = Cnn14().spectrogram_extractor(wave)[:, 0]  # (B, T, F)
    ref = torch.stft(
        wave, 512, 160, window=torch.hann_window(512), center=True, pad_mode="reflect", return_complex=True
    )
    assert torch.allclose(ours, ref.abs().pow(2).transpose(1, 2), rtol=1e-3, atol=1e-2)


def test_slaney_mel_filters_peak_at_their_centres():
    from klear_lightning.metrics.nets.cnn14 import slaney_mel_filters

    w = slaney_mel_filters(16000, 512, 64, 50.0, 8000.0)
    assert w.shape == (257, 64) and (w >= 0).all()
    # Slaney scale: linear below 1 kHz (200/3 Hz per mel), so the filter peaks of the lowest
    # bands advance by a constant step; area normalisation makes each triangle integrate to 1 Hz^-1 * Hz.
    peaks = w.argmax(0).float()
    assert (peaks[1:] >= peaks[:-1]).all()
    bin_hz = 8000 / 256
    areas = w.sum(0) * bin_hz
    assert torch.allclose(areas[20:], torch.ones(44), atol=0.08)


def test_load_cnn14_rejects_another_network(tmp_path):
    from klear_lightning.metrics.nets.cnn14 import load_cnn14

    path = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="not a PANNs Cnn14"):
        load_cnn14(path)


def test_kl_panns_shares_the_extractor_and_is_zero_on_identical_clips(panns_checkpoint):
    registry = load_registry()
    ctx = BuildContext.create({"panns": str(panns_checkpoint)})
    fd, kl = registry["fd_panns_avbench"].build(ctx), registry["kl_panns_avbench"].build(ctx)
    assert ctx._cache["panns"] is not None and len(ctx._cache) == 1
    g = torch.Generator().manual_seed(1)
    gen = [MediaClip(None, 8.0, torch.randn(8000, generator=g) * 0.1, 16000) for _ in range(2)]
    ref = [MediaClip(None, 8.0, torch.sin(torch.arange(24000) * 0.05 * (i + 1)) * 0.3, 24000) for i in range(2)]
    kl.update(ref, ref)
    assert float(kl.compute()) == pytest.approx(0.0, abs=1e-9)
    kl.reset()
    kl.update(gen, ref)
    assert float(kl.compute()) > 0
    # the network runs once per batch of clips: FD reads the features KL just computed
    assert fd.features(gen) is ctx._cache["panns"](gen).embedding
