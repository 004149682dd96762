"""CLAP (LAION, HTS-AT audio tower + RoBERTa text tower) through `transformers.ClapModel`, computing
what LAION's own `laion_clap` code computes at inference, as Verse-Bench runs it.

`metrics.checkpoints.clap` is either
- a transformers directory (config.json, weights, tokenizer files), e.g. a local copy of
  `laion/clap-htsat-unfused` or `laion/clap-htsat-fused` (its preprocessor config is not read: the
  features below are LAION's whatever it says); or
- an original LAION `.pt` checkpoint (`630k-audioset-best.pt`, or `630k-audioset-fusion-best.pt`
  as Verse-Bench uses), read through the allow-list reader and converted key by key into the
  transformers model (config inferred from tensor shapes; every tensor of the file is either
  mapped, or a LAION-only tensor that is checked or documented below); its RoBERTa tokenizer files
  come from `metrics.checkpoints.clap_tokenizer` (a local copy of `roberta-base`'s tokenizer).

Audio input, as `laion_clap` builds it in eval mode (`training/data.py:get_audio_features` and
HTSAT's forward), not as `ClapFeatureExtractor.__call__` does:
- 48 kHz; log-mel 1024-point Hann STFT, hop 480, 64 bins from 50 Hz to 14 kHz (LAION's `fmin`; the
  feature extractor's own default is 0 Hz); non-fusion models use the Slaney-normalised filters of
  the checkpoint's in-model front end, fusion models torchaudio's HTK filters;
- clips up to 10 s are repeated then zero-padded to 10 s ("repeatpad");
- longer clips: non-fusion models take one crop of 10 s, fusion models a shrunk view of the whole
  mel (bilinear with anti-aliasing, as torchvision's Resize) plus three crops from the front, middle
  and back thirds; the crop positions are drawn from a generator seeded by `seed` and the clip's
  key, so a clip always gets the same crops (LAION and transformers draw them from numpy's global
  random state);
- a fusion model only fuses the clips that are longer than 10 s. (`ClapFeatureExtractor` marks a
  random short clip as "longer" when no clip of the batch is, which LAION does only in training:
  in eval it runs such clips through the global branch alone.)

Verse-Bench (`fd/clap_inferencer.py`) also peak-normalises each wave to -1 dBFS and rounds it
through int16 before embedding (`versebench_wave`); both CLAP metrics here do the same.

`clap_score_versebench`: cosine between the audio embedding and the text embedding of the clip's
`audio_caption` (Verse-Bench: the item's `audio_prompt`), averaged over clips.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, MetricUnavailable, register_metric
from klear_lightning.metrics.nets.cnn14 import slaney_mel_filters
from klear_lightning.safe_pickle import load_torch_file

SAMPLE_RATE = 48000
MAX_SAMPLES = 10 * SAMPLE_RATE
N_FFT = 1024
HOP = 480
N_MELS = 64
F_MIN = 50.0
F_MAX = 14000.0
TEXT_MAX_TOKENS = 77  # LAION's tokenizer setting
CHECKPOINT_FORMATS = (
    "LAION CLAP training checkpoint {'epoch', 'name', 'state_dict' ('module.' prefixed), 'optimizer', 'scaler'} (.pt)",
    "bare LAION CLAP state dict",
    "transformers ClapModel directory (config.json + safetensors/bin, tokenizer, preprocessor_config.json)",
)

# LAION-only tensors with no transformers counterpart: the training-only MLPs, the AudioSet head, the
# rebuilt attention masks and position ids. The in-model front end (STFT kernels, mel filters) is
# not loaded either: it is checked against the filters the feature extraction uses (`_check_front_end`).
_DROPPED = re.compile(
    r"^(audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\.|text_transform\.|audio_transform\.)"
    r"|\.attn_mask$|^text_branch\.embeddings\.position_ids$"
)
_BLOCK_RENAMES = (
    (".norm1.", ".layernorm_before."),
    (".norm2.", ".layernorm_after."),
    (".attn.proj.", ".attention.output.dense."),
    (".attn.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".attn.relative_position_index", ".attention.self.relative_position_index"),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)
# numpy scalars / arrays some training checkpoints carry beside the weights: read as inert records.
_NUMPY_RECORDS = tuple(
    f"{module}.{name}"
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) + ("numpy.ndarray", "numpy.dtype")


def laion_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and split qkv of) a LAION CLAP state dict into `transformers.ClapModel` keys."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if _DROPPED.search(key):
            continue
        if key.startswith("audio_branch."):
            key = "audio_model.audio_encoder." + key.removeprefix("audio_branch.")
            key = key.replace("audio_encoder.bn0.", "audio_encoder.batch_norm.")
            if ".blocks." in key:
                for old, new in _BLOCK_RENAMES:
                    key = key.replace(old, new)
                if ".attn.qkv." in key:
                    for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                        out[key.replace(".attn.qkv.", f".attention.self.{name}.")] = part.clone()
                    continue
        elif key.startswith("text_branch."):
            key = "text_model." + key.removeprefix("text_branch.")
        elif m := re.match(r"^(text|audio)_projection\.([02])\.(weight|bias)$", key):
            key = f"{m[1]}_projection.linear{1 if m[2] == '0' else 2}.{m[3]}"
        elif key not in ("logit_scale_a", "logit_scale_t"):
            raise ValueError(f"unexpected key {key!r} in a LAION CLAP checkpoint")
        out[key] = value
    return out


def config_from_laion(state: dict[str, Tensor]) -> Any:
    """A `ClapConfig` matching a converted state dict's shapes. The text tower is LAION's RoBERTa
    (`roberta-base`'s settings: heads = hidden // 64, LayerNorm eps 1e-5)."""
    from transformers import ClapConfig

    enc = "audio_model.audio_encoder."
    n_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(enc + "layers."))
    depths = [
        1 + max(int(k.split(".")[5]) for k in state if k.startswith(f"{enc}layers.{i}.blocks."))
        for i in range(n_layers)
    ]
    tables = [state[f"{enc}layers.{i}.blocks.0.attention.self.relative_position_bias_table"] for i in range(n_layers)]
    window = (int(round(tables[0].shape[0] ** 0.5)) + 1) // 2
    words = state["text_model.embeddings.word_embeddings.weight"]
    text_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layer."))
    audio_proj = state["audio_projection.linear1.weight"]
    return ClapConfig(
        text_config=dict(
            vocab_size=words.shape[0],
            hidden_size=words.shape[1],
            num_hidden_layers=text_layers,
            num_attention_heads=max(1, words.shape[1] // 64),
            intermediate_size=state["text_model.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=state["text_model.embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=state["text_model.embeddings.token_type_embeddings.weight"].shape[0],
            layer_norm_eps=1e-5,
        ),
        audio_config=dict(
            patch_embeds_hidden_size=state[enc + "patch_embed.proj.weight"].shape[0],
            depths=depths,
            num_attention_heads=[t.shape[1] for t in tables],
            window_size=window,
            hidden_size=audio_proj.shape[1],
            enable_fusion=any(k.startswith(enc + "patch_embed.mel_conv2d") for k in state),
        ),
        projection_dim=audio_proj.shape[0],
    )


def _check_front_end(path: Path, state: dict[str, Tensor]) -> None:
    """A non-fusion LAION checkpoint carries its mel filters (`logmel_extractor.melW`); the features
    here use LAION's 50-14000 Hz Slaney filters, so the file's must be those."""
    melw = state.get("audio_branch.logmel_extractor.melW")
    if melw is None:
        return
    expected = slaney_mel_filters(SAMPLE_RATE, N_FFT, N_MELS, F_MIN, F_MAX)
    if melw.shape != expected.shape or (melw.float() - expected).abs().max() > 1e-4 * expected.abs().max():
        raise ValueError(
            f"{path}: its mel front end (logmel_extractor.melW) is not LAION's 64-bin 50-14000 Hz filter bank"
        )


def load_laion_checkpoint(path: Path) -> Any:
    """A `ClapModel` holding the weights of an original LAION checkpoint (`CHECKPOINT_FORMATS`)."""
    from transformers import ClapModel

    raw = load_torch_file(path, opaque=_NUMPY_RECORDS)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a LAION CLAP checkpoint (a state dict, or a dict with 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    _check_front_end(path, state)
    converted = laion_to_transformers(state)
    model = ClapModel(config_from_laion(converted))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ValueError(f"{path}: LAION CLAP conversion left missing keys {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def versebench_wave(wave: np.ndarray) -> np.ndarray:
    """Verse-Bench's preparation: peak-normalise to -1 dBFS (pyloudnorm), then round through int16
    (clip to [-1, 1], x 32767, truncate, / 32767). A silent wave stays silent."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 0:
        wave = wave * (10.0 ** (-1.0 / 20.0) / peak)
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0


class ClapExtractor:
    """Text and audio embeddings (L2-normalised, float64 on the CPU); TF32 convolutions off."""

    def __init__(self, model: Any, tokenizer: Any, feature_extractor: Any, device: torch.device, seed: int = 0) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.device = device
        self.seed = seed
        self.fusion = bool(model.config.audio_config.enable_fusion)

    @staticmethod
    def _pooled(out: Any) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        tok = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=TEXT_MAX_TOKENS, return_tensors="pt"
        )
        emb = self._pooled(
            self.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            )
        )
        return torch.nn.functional.normalize(emb.double(), dim=-1).cpu()

    def _mel(self, wave: np.ndarray) -> np.ndarray:
        """(frames, 64) log-mel of the whole wave with the fusion (HTK) filters."""
        from transformers.audio_utils import spectrogram, window_function

        fe = self.feature_extractor
        return spectrogram(
            wave,
            window_function(fe.fft_window_size, "hann"),
            frame_length=fe.fft_window_size,
            hop_length=fe.hop_length,
            power=2.0,
            mel_filters=fe.mel_filters,
            log_mel="dB",
        ).T

    def model_input(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """(input_features (channels, frames, 64), is_longer) for one 48 kHz wave, as LAION builds it."""
        if not self.fusion:
            if len(wave) > MAX_SAMPLES:
                start = int(rng.integers(0, len(wave) - MAX_SAMPLES + 1))
                wave = wave[start : start + MAX_SAMPLES]
            feats = self.feature_extractor([wave], sampling_rate=SAMPLE_RATE, return_tensors="np")
            return feats["input_features"][0].astype(np.float32), False
        if len(wave) < MAX_SAMPLES:  # repeat, then zero-pad to 10 s
            wave = np.pad(
                np.tile(wave, MAX_SAMPLES // len(wave)), (0, MAX_SAMPLES - (MAX_SAMPLES // len(wave)) * len(wave))
            )
        mel = self._mel(wave)
        chunk = MAX_SAMPLES // HOP + 1
        if mel.shape[0] == chunk:
            return np.stack([mel] * 4).astype(np.float32), False
        ranges = np.array_split(np.arange(mel.shape[0] - chunk + 1), 3)
        starts = [int(rng.choice(r)) if len(r) else 0 for r in ranges]
        shrunk = F.interpolate(
            torch.from_numpy(mel)[None, None],
            size=(chunk, mel.shape[1]),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0, 0].numpy()
        return np.stack([shrunk] + [mel[s : s + chunk] for s in starts]).astype(np.float32), True

    @torch.inference_mode()
    def audio_embeddings(self, clips: Sequence[MediaClip]) -> Tensor:
        embs = []
        for clip in clips:
            wave = versebench_wave(clip_audio(clip, SAMPLE_RATE, "CLAP").numpy())
            rng = np.random.Generator(np.random.PCG64([self.seed, zlib.crc32(str(clip.meta.get("key", "")).encode())]))
            features, longer = self.model_input(wave, rng)
            with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
                emb = self._pooled(
                    self.model.get_audio_features(
                        input_features=torch.from_numpy(features)[None].to(self.device),
                        is_longer=torch.tensor([[longer]], device=self.device) if self.fusion else None,
                    )
                )
            embs.append(emb)
        return torch.nn.functional.normalize(torch.cat(embs).double(), dim=-1).cpu()


def laion_feature_extractor(fusion: bool) -> Any:
    """`ClapFeatureExtractor` with LAION's audio settings (50-14000 Hz, 10 s, repeat-pad)."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(
        feature_size=N_MELS,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP,
        max_length_s=10,
        fft_window_size=N_FFT,
        frequency_min=F_MIN,
        frequency_max=F_MAX,
        truncation="fusion" if fusion else "rand_trunc",
        padding="repeatpad",
    )


def load_clap(path: Path, tokenizer_dir: Path | None, device: torch.device, seed: int = 0) -> ClapExtractor:
    """A transformers directory or a LAION checkpoint; the audio features are LAION's either way (a
    directory's preprocessor_config.json is not read: its mel range is not always LAION's)."""
    from transformers import AutoTokenizer, ClapModel

    if path.is_dir():
        model = ClapModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or path)
    else:
        if tokenizer_dir is None:
            raise MetricUnavailable(
                "set metrics.checkpoints.clap_tokenizer to a local roberta-base tokenizer directory (needed for a LAION .pt)"
            )
        model = load_laion_checkpoint(path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return ClapExtractor(
        model, tokenizer, laion_feature_extractor(bool(model.config.audio_config.enable_fusion)), device, seed
    )


def clap_extractor(ctx: BuildContext) -> ClapExtractor:
    tokenizer_dir = (
        ctx.checkpoint("clap_tokenizer", "a roberta-base tokenizer directory")
        if ctx.checkpoints.get("clap_tokenizer")
        else None
    )
    return ctx.load(
        "clap",
        "a transformers CLAP directory (e.g. laion/clap-htsat-fused) or a LAION .pt",
        lambda path: load_clap(path, tokenizer_dir, ctx.device),
    )


class ClapScore(ClipMetric):
    columns = (Column("clap_score_versebench", "CLAP", higher_is_better=True),)
    protocol = (
        "Verse-Bench: LAION CLAP (Verse-Bench: 630k-audioset-fusion-best), 48 kHz wave peak-normalised to "
        "-1 dBFS and rounded through int16, LAION eval features (50-14000 Hz, 10 s repeat-pad, seeded crops), "
        "cosine(audio, audio_caption text), mean"
    )

    def __init__(self, extractor: ClapExtractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        captioned = [c for c in generated if str(c.meta.get("audio_caption") or "").strip()]
        if not captioned:
            return
        text = self.extractor.text_embeddings([str(c.meta["audio_caption"]) for c in captioned])
        audio = self.extractor.audio_embeddings(captioned)
        self.total += (text * audio).sum(-1).sum().to(self.device)
        self.n += len(captioned)

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clip with an audio_caption in its meta was scored")
        return self.total / self.n


@register_metric(
    "clap_score_versebench", group="audio", description="CLAP audio-caption cosine (Verse-Bench, LAION CLAP)"
)
def build_clap_score(ctx: BuildContext) -> ClipMetric:
    return ClapScore(clap_extractor(ctx))
