import numpy as np
import pytest
import torch

from benchmarks.parity.clap import transformers_to_laion
from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import resample
from klear_lightning.metrics.base import BuildContext, MetricUnavailable
from klear_lightning.metrics.nets.cnn14 import slaney_mel_filters
from klear_lightning.metrics.suite import load_registry
from tests.helpers.nets import save_tiny_clap, tiny_clap_config

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A randomly initialised CLAP saved as a transformers directory with a byte-level tokenizer."""
    return save_tiny_clap(tmp_path_factory.mktemp("clap"))


def clips(captions):
    g = torch.Generator().manual_seed(3)
    return [
        MediaClip(
            video=None,
            fps=8.0,
            audio=torch.randn(16000 + 4000 * i, generator=g) * 0.2,
            sample_rate=16000,
            meta={"key": f"c{i}", "audio_caption": c} if c is not None else {"key": f"c{i}"},
        )
        for i, c in enumerate(captions)
    ]


def versebench(wave):
    """Verse-Bench's wave preparation, written out: peak to -1 dBFS, int16 round trip."""
    wave = wave * (10 ** (-1 / 20) / np.abs(wave).max())
    return (np.clip(wave, -1, 1) * 32767).astype(np.int16) / 32767.0


def reference_scores(model, tokenizer_dir, items):
    """Cosine of text and audio embeddings through the plain transformers API with LAION's mel range
    (50-14000 Hz; short clips need no crop, so nothing random), in numpy."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    fe = transformers.ClapFeatureExtractor(truncation="rand_trunc", frequency_min=50, frequency_max=14000)
    with torch.no_grad():
        t = tok([c.meta["audio_caption"] for c in items], padding=True, return_tensors="pt")
        text = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        waves = [versebench(resample(c.audio, c.sample_rate, 48000).numpy()) for c in items]
        f = fe(waves, sampling_rate=48000, return_tensors="pt")
        audio = model.get_audio_features(input_features=f["input_features"], is_longer=f["is_longer"])
    text = getattr(text, "pooler_output", text).double().numpy()
    audio = getattr(audio, "pooler_output", audio).double().numpy()
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    return (text * audio).sum(1)


def test_clap_score_is_the_mean_cosine_and_skips_uncaptioned_clips(clap_dir):
    metric = load_registry()["clap_score_versebench"].build(BuildContext.create({"clap": str(clap_dir)}))
    items = clips(["a dog barks twice", None, "rain on a tin roof"])
    metric.update(items[:2])
    metric.update(items[2:])
    model = transformers.ClapModel.from_pretrained(clap_dir).eval()
    expected = reference_scores(model, clap_dir, [items[0], items[2]]).mean()
    result = metric.results()["clap_score_versebench"]
    assert result.n == 2
    assert result.value == pytest.approx(float(expected), abs=1e-5)


def test_clap_unconfigured_names_the_field():
    with pytest.raises(MetricUnavailable, match=r"set metrics\.checkpoints\.clap to"):
        load_registry()["clap_score_versebench"].build(BuildContext.create({}))


def _to_laion(hf_state):
    """Write a transformers CLAP state dict in the original LAION layout (laion_clap's CLAP module:
    audio_branch = HTSAT_Swin_Transformer, text_branch = RobertaModel, nn.Sequential projections), with
    the tensors LAION has and transformers does not, `module.`-prefixed as LAION's training saves it."""
    out = transformers_to_laion(hf_state)
    # tensors LAION has and transformers does not
    out["audio_branch.spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024)
    out["audio_branch.spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(513, 1, 1024)
    out["audio_branch.logmel_extractor.melW"] = slaney_mel_filters(48000, 1024, 64, 50.0, 14000.0)
    out["audio_branch.tscam_conv.weight"] = torch.randn(527, 64, 2, 3)
    out["audio_branch.head.weight"] = torch.randn(527, 527)
    out["audio_branch.layers.2.blocks.1.attn_mask"] = torch.zeros(4, 64, 64)
    for branch in ("text_transform", "audio_transform"):
        out[f"{branch}.sequential.0.weight"] = torch.randn(16, 16)
        out[f"{branch}.sequential.3.weight"] = torch.randn(16, 16)
    return {"module." + k: v for k, v in out.items()}


def test_laion_checkpoint_converts_into_the_transformers_model(clap_dir, tmp_path):
    from klear_lightning.metrics.clap import load_laion_checkpoint

    torch.manual_seed(1)
    original = transformers.ClapModel(tiny_clap_config()).eval()
    path = tmp_path / "630k-audioset-best.pt"
    torch.save({"epoch": 45, "state_dict": _to_laion(original.state_dict())}, path)

    converted = load_laion_checkpoint(path).eval()
    theirs = original.state_dict()
    for key, value in converted.state_dict().items():
        assert torch.equal(value, theirs[key]), key

    ctx = BuildContext.create({"clap": str(path), "clap_tokenizer": str(clap_dir)})
    metric = load_registry()["clap_score_versebench"].build(ctx)
    items = clips(["birds singing", "an engine idles"])
    metric.update(items)
    expected = reference_scores(original, clap_dir, items).mean()
    assert float(metric.compute()) == pytest.approx(float(expected), abs=1e-5)


def test_laion_checkpoint_with_another_mel_range_is_refused(tmp_path):
    from klear_lightning.metrics.clap import load_laion_checkpoint

    state = _to_laion(transformers.ClapModel(tiny_clap_config()).state_dict())
    state["module.audio_branch.logmel_extractor.melW"] = slaney_mel_filters(48000, 1024, 64, 0.0, 14000.0)
    path = tmp_path / "clap.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="50-14000 Hz"):
        load_laion_checkpoint(path)


def test_laion_checkpoint_needs_a_tokenizer_directory(tmp_path):
    path = tmp_path / "clap.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(MetricUnavailable, match="clap_tokenizer"):
        load_registry()["clap_score_versebench"].build(BuildContext.create({"clap": str(path)}))


def test_fd_clap_versebench_shares_the_clap_extractor(clap_dir):
    ctx = BuildContext.create({"clap": str(clap_dir)})
    registry = load_registry()
    score, pairwise = registry["clap_score_versebench"].build(ctx), registry["fd_clap_versebench"].build(ctx)
    assert score.extractor is ctx._cache["clap"]
    items = clips(["a", "b", "c"])
    pairwise.update(items, items)
    assert float(pairwise.compute()) == pytest.approx(0.0, abs=1e-12)
    pairwise.reset()
    pairwise.update(items, items[::-1])
    emb = ctx._cache["clap"].audio_embeddings(items).numpy()
    expected = (((emb - emb[::-1]) ** 2).sum(1)).mean()
    assert float(pairwise.compute()) == pytest.approx(float(expected), rel=1e-9)


def test_long_clip_crop_is_seeded_by_clip_key_not_by_global_random_state(clap_dir):
    extractor = load_registry()["clap_score_versebench"].build(BuildContext.create({"clap": str(clap_dir)})).extractor
    g = torch.Generator().manual_seed(5)
    wave = torch.randn(48000 * 13, generator=g) * 0.2  # 13 s: one 10 s crop is drawn
    clip = MediaClip(video=None, fps=8.0, audio=wave, sample_rate=48000, meta={"key": "long"})
    other = MediaClip(video=None, fps=8.0, audio=wave, sample_rate=48000, meta={"key": "other"})
    np.random.seed(1)
    first = extractor.audio_embeddings([clip])
    np.random.seed(2)
    again = extractor.audio_embeddings([other, clip])[1:]
    assert torch.equal(first, again)
    assert not torch.allclose(first, extractor.audio_embeddings([other]))  # another key, another crop
