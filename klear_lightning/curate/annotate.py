"""The annotation models of `klear curate` (step 6), each a local transformers directory from the config:

- `captioner`: an image-text-to-text model that continues a text prompt from an image (BLIP, BLIP-2,
  GIT) writes the clip's `video_caption` from its middle frame, after `caption_prompt` (chat VLMs, whose
  prompt is a templated conversation, are not wired in);
- `audio_captioner`: a chat model that listens (transformers' any-to-any, e.g. Qwen2-Audio) writes the
  clip's `audio_caption` from its audio, asked `audio_caption_prompt` in a user turn;
- `speaker_models`: audio-classification models (e.g. wav2vec2 fine-tuned for gender, age or emotion),
  one per attribute name; each labels a speech clip's speaker with its most probable class.

Nothing here is downloaded: a directory that does not hold a saved model fails at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _pipeline(task: str, directory: Path) -> Any:
    from transformers import pipeline

    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json (expected a saved transformers model directory)")
    return pipeline(task, model=str(directory), device="cpu")


@dataclass(frozen=True)
class SpeakerLabel:
    """One attribute of a speaker: the most probable class and its probability."""

    label: str
    p: float


class Captioner:
    """Writes one caption for a frame with a local image-text-to-text model."""

    def __init__(self, directory: Path, prompt: str, max_new_tokens: int = 40) -> None:
        self.pipe = _pipeline("image-text-to-text", directory)
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    def __call__(self, frame: np.ndarray) -> str:
        """The caption of one uint8 (H, W, 3) frame: what the model writes after the prompt."""
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(frame))
        out = self.pipe(images=image, text=self.prompt, max_new_tokens=self.max_new_tokens, return_full_text=False)
        return str(out[0]["generated_text"]).strip()


class AudioCaptioner:
    """Writes one caption for a clip's audio with a local any-to-any model (a chat model that listens)."""

    def __init__(self, directory: Path, prompt: str, max_new_tokens: int = 40) -> None:
        self.pipe = _pipeline("any-to-any", directory)
        self.sample_rate = int(self.pipe.processor.feature_extractor.sampling_rate)
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    def __call__(self, audio: np.ndarray, sr: int) -> str:
        wave = _resampled(audio, sr, self.sample_rate)
        turn = [{"role": "user", "content": [{"type": "audio", "audio": wave}, {"type": "text", "text": self.prompt}]}]
        out = self.pipe(text=turn, max_new_tokens=self.max_new_tokens, return_full_text=False)
        return str(out[0]["generated_text"]).strip()


def _resampled(audio: np.ndarray, sr: int, target: int) -> np.ndarray:
    import torch

    from klear_lightning.metrics.audio_prep import resample

    return resample(torch.from_numpy(audio.astype(np.float32)), sr, target).numpy()


class SpeakerClassifier:
    """Labels a speaker with a local audio-classification model (its own feature extractor and rate)."""

    def __init__(self, directory: Path) -> None:
        self.pipe = _pipeline("audio-classification", directory)
        self.sample_rate = int(self.pipe.feature_extractor.sampling_rate)

    def __call__(self, audio: np.ndarray, sr: int) -> SpeakerLabel:
        wave = _resampled(audio, sr, self.sample_rate)
        [best] = self.pipe({"raw": wave, "sampling_rate": self.sample_rate}, top_k=1)
        return SpeakerLabel(str(best["label"]), float(best["score"]))
