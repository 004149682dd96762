"""Synthetic media and shard samples (media, shard and data-module tests)."""

import numpy as np

from klear_lightning.data.schema import AVSample, embedding_name, latent_name


def smooth_frames(t: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [np.stack([(xx * 4 + i * 8) % 256, (yy * 4) % 256, np.full_like(xx, 40 + i * 10)], -1) for i in range(t)]
    return np.stack(frames).astype(np.uint8)


def make_sample(key: str, split: str = "sound", seconds: float = 1.0, **meta) -> AVSample:
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    audio = (rng.integers(-16000, 16000, int(16000 * seconds)) / 32768).astype(np.float32)
    record = {
        "video_caption": f"a ball {key}",
        "audio_caption": "a bounce",
        "transcript": "",
        "split": split,
        "annotation": {"events": [0.5]},
        "source": "test",
    }
    record.update(meta)
    return AVSample(
        key,
        smooth_frames(int(8 * seconds), 32, 32),
        8.0,
        audio,
        16000,
        record,
        {
            latent_name("pixel", "1"): rng.standard_normal((4, 2, 2)).astype(np.float32),
            embedding_name("video_text", "minilm", "1"): rng.standard_normal((5, 8)).astype(np.float32),
        },
    )
