import math
import shutil

import numpy as np
import pytest
import torch

from klear_lightning.codecs import (
    AudioCodecConfig,
    StatsAccumulator,
    TextEncoderConfig,
    VideoCodecConfig,
    build_audio_codec,
    build_text_encoder,
    build_video_codec,
    latent_geometry,
    load_stats,
)
from klear_lightning.codecs.audio import spectral_distance
from klear_lightning.codecs.text import minilm_path
from klear_lightning.sequence import ClipSpec, SequenceSpec

try:
    import diffusers
except ImportError:
    diffusers = None
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="diffusers is not installed")


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder(TextEncoderConfig())


def chirp(n: int, sr: int) -> torch.Tensor:
    t = torch.arange(n) / sr
    return (0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 900 * t * (1 + t)))[None]


def test_minilm_gives_token_embeddings_and_mask(minilm):
    emb, mask = minilm.encode(["a red ball bounces", "a man speaks loudly in a large hall"])
    assert emb.shape[0] == 2 and emb.shape[2] == 384 == minilm.dim
    assert mask.dtype == torch.bool and mask[0].sum() < mask[1].sum() == emb.shape[1]
    assert torch.all(emb[0, ~mask[0]] == 0)
    a, _ = minilm.encode(["a red ball bounces"])
    b, _ = minilm.encode(["a blue cube slides"])
    torch.testing.assert_close(a[0], emb[0, : a.shape[1]], atol=1e-4, rtol=1e-4)
    assert (a[0, 1:3] - b[0, 1:3]).abs().mean() > 0.05


def test_hf_encoder_from_local_path_with_random_weights(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(cfg).save_pretrained(tmp_path / "tiny.bert")
    tokenizer.save_pretrained(tmp_path / "tiny.bert")
    enc = build_text_encoder(TextEncoderConfig(name="hf", path=str(tmp_path / "tiny.bert"), max_tokens=8))
    emb, mask = enc.encode(["one two three four five six seven eight nine ten", "hi"])
    assert emb.shape == (2, 8, 32) and enc.dim == 32 and mask[1].sum() == 3
    assert enc.name == "tiny_bert" and len(enc.version) == 10


def test_text_encoder_config_errors(tmp_path):
    with pytest.raises(ValueError, match="^text_encoder.path: required"):
        build_text_encoder(TextEncoderConfig(name="hf"))
    with pytest.raises(ValueError, match="^text_encoder.path: .*: no config.json there"):
        build_text_encoder(TextEncoderConfig(name="hf", path=str(tmp_path)))


def test_logmel_griffin_lim_length_and_spectral_similarity():
    codec = build_audio_codec(AudioCodecConfig())
    wave = chirp(32000, 16000)
    lat = codec.encode(wave)
    assert lat.shape == (1, 64, 100)
    back = codec.decode(lat)
    assert back.shape == wave.shape
    noise = torch.randn_like(wave) * 0.3
    assert spectral_distance(codec.encode(back), lat) < 0.3 * spectral_distance(codec.encode(noise), lat)


SPEECH = [  # fixed SyncWorld speech: both voices, both pitches, both paces
    ("the weather is cold", {"gender": "female", "pitch": "low", "pace": "slow"}),
    ("my brother plays guitar", {"gender": "male", "pitch": "high", "pace": "fast"}),
]


@pytest.mark.flite
@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not on PATH")
def test_logmel_round_trip_keeps_speech_intelligible():
    """The default decoder's round trip on fixed speech, by two cheap proxies: STOI (short-time
    objective intelligibility, 0-1) against the clean clip, and the mel consistency of the decoded
    audio (mean |log-mel of it - the latents|). Measured: STOI 0.907 / 0.931, mel 0.148 / 0.148;
    the previous pseudo-inverse decoder 0.897 / 0.920 and 0.169 / 0.159, 8 Griffin-Lim
    iterations 0.165 / 0.167, none (random phase) 0.81 / 0.86 and 0.43 / 0.47."""
    from pystoi import stoi

    from klear_lightning.data.syncworld.speech import synthesise

    codec = build_audio_codec(AudioCodecConfig())
    singles = []
    for text, voice in SPEECH:
        speech = synthesise(text, voice, 16000)
        clean = np.zeros(32000)
        clean[1600 : 1600 + speech.size] = 0.8 * speech / np.abs(speech).max()
        latents = codec.encode(torch.from_numpy(clean).float()[None])
        decoded = codec.decode(latents)
        assert stoi(clean, decoded[0].double().numpy(), 16000) > 0.88, text
        assert float(spectral_distance(codec.encode(decoded), latents)) < 0.155, text
        singles.append((latents, decoded))
    # deterministic, and a clip decodes the same whatever it is batched with
    batched = codec.decode(torch.cat([lat for lat, _ in singles]))
    for i, (_, decoded) in enumerate(singles):
        torch.testing.assert_close(batched[i : i + 1], decoded, atol=1e-4, rtol=0)


def test_pixel_codec_round_trip_and_geometry():
    codec = build_video_codec(VideoCodecConfig(factor=4))
    frames = torch.randint(0, 256, (2, 16, 32, 32, 3), dtype=torch.uint8)
    lat = codec.encode(frames)
    assert lat.shape == (2, 48, 16, 8, 8) and lat.min() >= -1 and lat.max() <= 1
    assert torch.equal(codec.decode(lat), frames)
    geometry = latent_geometry(codec, build_audio_codec(AudioCodecConfig()))
    spec = SequenceSpec(ClipSpec(), geometry)
    assert spec.video_latent_hw == (8, 8) and spec.audio_latent_frames == 100
    pooled = build_video_codec(VideoCodecConfig(factor=2, pool=2))
    assert (
        pooled.encode(frames).shape == (2, 12, 16, 8, 8) and pooled.decode(pooled.encode(frames)).shape == frames.shape
    )


def test_stats_accumulator_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [rng.normal(loc=[[1.0], [-2.0], [0.5]], scale=[[1.0], [3.0], [0.1]], size=(3, n)) for n in (50, 70)]
    acc, other = StatsAccumulator("c", "1"), StatsAccumulator("c", "1")
    acc.update(chunks[0])
    other.update(chunks[1])
    acc.merge(other)
    stats = acc.result()
    every = np.concatenate(chunks, 1)
    np.testing.assert_allclose(stats.mean, every.mean(1), rtol=1e-10)
    np.testing.assert_allclose(stats.std, every.std(1), rtol=1e-10)
    stats.save(tmp_path)
    loaded = load_stats(tmp_path, "c", "1")
    z = loaded.normalize(torch.from_numpy(every))
    torch.testing.assert_close(z.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(loaded.denormalize(z[None])[0], torch.from_numpy(every))


@needs_diffusers
def test_oobleck_loads_from_local_path(tmp_path):
    diffusers.AutoencoderOobleck(
        encoder_hidden_size=8,
        downsampling_ratios=[2, 4],
        channel_multiples=[1, 2],
        decoder_channels=8,
        decoder_input_channels=4,
        audio_channels=2,
        sampling_rate=16000,
    ).save_pretrained(tmp_path / "vae")
    codec = build_audio_codec(AudioCodecConfig(name="oobleck", path=str(tmp_path / "vae")))
    assert (codec.channels, codec.hop, codec.sample_rate) == (4, 8, 16000)
    lat = codec.encode(torch.randn(2, 1600) * 0.1)
    assert lat.shape == (2, 4, 200) and codec.decode(lat).shape == (2, 1600)


@needs_diffusers
@pytest.mark.parametrize("kind", ["cogvideox", "wan"])
def test_video_vae_loads_from_local_path(tmp_path, kind):
    if kind == "cogvideox":
        vae = diffusers.AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4
        )
    else:
        vae = diffusers.AutoencoderKLWan(
            base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4
        )
    vae.save_pretrained(tmp_path / "vae")
    codec = build_video_codec(VideoCodecConfig(name=kind, path=str(tmp_path / "vae")))
    assert (codec.channels, codec.temporal_factor, codec.spatial_factor, codec.causal) == (4, 4, 8, True)
    frames = torch.randint(0, 256, (1, 9, 32, 32, 3), dtype=torch.uint8)
    lat = codec.encode(frames)
    assert lat.shape == (1, 4, 3, 4, 4) and codec.decode(lat).shape == frames.shape
    with pytest.raises(ValueError, match="do not tile"):
        codec.encode(frames[:, :8])


def test_pretrained_codec_needs_a_path(tmp_path):
    with pytest.raises((ValueError, ImportError), match="video_codec.path|diffusers"):
        build_video_codec(VideoCodecConfig(name="wan"))
