"""A small hand-made AVBatch with padding in its last sample (flow, sampling and overfit tests)."""

import torch

from klear_lightning.streams import AVBatch


def make_batch(b: int = 2, seed: int = 0, text_len: int = 5) -> AVBatch:
    g = torch.Generator().manual_seed(seed)
    video_mask = torch.ones(b, 3, dtype=torch.bool)
    audio_mask = torch.ones(b, 8, dtype=torch.bool)
    vt_mask = torch.ones(b, text_len, dtype=torch.bool)
    at_mask = torch.ones(b, text_len, dtype=torch.bool)
    video_mask[-1, -1] = False  # last sample: padded video frame and audio tail, short captions
    audio_mask[-1, -3:] = False
    vt_mask[-1, 2:] = False
    at_mask[-1, 3:] = False
    return AVBatch(
        video=torch.randn(b, 4, 3, 2, 2, generator=g) * 2 + 1,
        video_mask=video_mask,
        audio=torch.randn(b, 6, 8, generator=g) * 2 - 1,
        audio_mask=audio_mask,
        video_text=torch.randn(b, text_len, 16, generator=g),
        video_text_mask=vt_mask,
        audio_text=torch.randn(b, text_len, 16, generator=g),
        audio_text_mask=at_mask,
    )
