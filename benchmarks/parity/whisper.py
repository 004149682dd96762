"""Whisper through faster-whisper (`wer_whisper_seedtts`) vs the transformers Whisper that Seed-TTS's
evaluation runs (`WhisperForConditionalGeneration` + `WhisperFeatureExtractor`), on identical weights.

A small Whisper of the official architecture (English vocabulary, 80 mel bins) gets seeded weights in
transformers, is converted to CTranslate2 with ctranslate2's own converter (as users convert large-v3)
and read through the project's `metrics.checkpoints.whisper` path (faster-whisper's `WhisperModel`, the
tokenizer of the shipped tiny.en). Compared on the same 3 s wave: the log-mel features, the encoder
output and the first decoding step's logits after <|startoftranscript|><|notimestamps|>.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from benchmarks.parity import ParityResult, compare, skipped
from benchmarks.parity.seeded import seeded_state_dict
from klear_lightning.metrics.base import BuildContext

EXTRACTOR = "whisper_faster_whisper"
FORMATS = ("CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json; ct2-transformers-converter output)",)
SEED = 0


def wave() -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(SEED + 4))
    t = np.arange(48000) / 16000
    return (
        0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.shape)
    ).astype(np.float32)


def check() -> ParityResult:
    import ctranslate2
    import transformers
    from ctranslate2.converters import TransformersConverter

    from klear_lightning.metrics.suite import load_registry
    from klear_lightning.metrics.wer import default_whisper_dir

    reference = f"transformers=={transformers.__version__} WhisperForConditionalGeneration + WhisperFeatureExtractor, seed {SEED}"
    config = transformers.WhisperConfig(
        vocab_size=51864,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
    )
    official = transformers.WhisperForConditionalGeneration(config).eval()
    official.load_state_dict(seeded_state_dict(official.state_dict(), SEED, std=0.1), strict=True)
    x = wave()
    with tempfile.TemporaryDirectory() as tmp:
        official.save_pretrained(Path(tmp) / "hf")
        ct2_dir = Path(
            TransformersConverter(str(Path(tmp) / "hf")).convert(str(Path(tmp) / "whisper-ct2"), quantization="float32")
        )
        for name in ("tokenizer.json", "vocabulary.txt"):  # tiny.en's vocabulary: the special tokens by name
            shutil.copy(default_whisper_dir() / name, ct2_dir / name)
        (ct2_dir / "vocabulary.json").unlink()
        metric = load_registry()["wer_whisper_seedtts"].build(BuildContext.create({"whisper": str(ct2_dir)}))
        model = metric.transcribe.model  # faster_whisper.WhisperModel as the metric loaded it
        ours_mel = model.feature_extractor(np.pad(x, (0, 16000 * 30 - len(x))))[:, :3000]
        theirs_mel = transformers.WhisperFeatureExtractor(feature_size=80)(
            x, sampling_rate=16000, return_tensors="np"
        ).input_features[0]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(theirs_mel[None].astype(np.float32)))
        ours_enc = np.array(model.model.encode(features, to_cpu=True))
        prompt = [50257, 50362]  # <|startoftranscript|> <|notimestamps|> (English-only vocabulary)
        step = model.model.generate(
            features,
            [prompt],
            max_length=3,
            return_logits_vocab=True,
            beam_size=1,
            suppress_blank=False,
            suppress_tokens=[],
        )[0]
        ours_logits = np.array(step.logits[0][0]) if step.logits else None
    with torch.no_grad():
        enc = official.model.encoder(torch.from_numpy(theirs_mel[None]))
        theirs_logits = official(encoder_outputs=enc, decoder_input_ids=torch.tensor([prompt])).logits[0, -1]
    if ours_logits is None:
        return skipped(EXTRACTOR, reference, FORMATS, f"ctranslate2 {version('ctranslate2')} returned no logits")
    worst, per = compare(
        [
            ("log_mel", ours_mel, theirs_mel),
            ("encoder", ours_enc[0], enc.last_hidden_state[0]),
            ("first_step_logits", ours_logits, theirs_logits),
        ]
    )
    return ParityResult(
        EXTRACTOR,
        f"{reference}; ours: faster-whisper=={version('faster-whisper')}, ctranslate2=={version('ctranslate2')} float32",
        worst,
        FORMATS,
        details={"per_output": per, "input": "3 s at 16 kHz, PCG64 seed 4"},
    )
