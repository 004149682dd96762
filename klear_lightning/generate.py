"""`klear generate`: prompts (+ a first image or a conditioning clip) -> mp4 with audio, wav, spectrogram png.

The batch is built like a training batch: captions through the data module's text encoder,
latents of the configured clip geometry (zeros where generated; encoded and normalised from the
given image / clip where conditioned), then `KlearModule.generate` samples and decodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from klear_lightning.checkpoint import check_checkpoint_path, load_for_inference
from klear_lightning.codecs import Decoders, normalize
from klear_lightning.errors import ConfigError
from klear_lightning.lightning_cli import instantiate_model_and_data
from klear_lightning.media import write_clip
from klear_lightning.module import KlearModule
from klear_lightning.sampling import SamplerConfig
from klear_lightning.streams import AVBatch
from klear_lightning.tasks import Role, get_task


def prompt_batch(
    data: Any,
    prompts: list[str],
    audio_prompts: list[str] | None = None,
    first_frames: Tensor | None = None,
    clip_latents: tuple[Tensor, Tensor] | None = None,
) -> AVBatch:
    """An AVBatch for `prompts` with the data module's clip geometry and text encoder.

    first_frames: normalised video latents (B, C, T_v, H, W) whose first frame conditions TI2V / TI2AV.
    clip_latents: normalised (video, audio) latents of a conditioning clip (V2A / A2V).
    """
    seq = data.sequence
    b = len(prompts)
    audio_prompts = audio_prompts or prompts
    if len(audio_prompts) != b:
        raise ConfigError(f"audio_prompt: {len(audio_prompts)} given for {b} prompts")
    vt, vt_mask = data.text_encoder.encode(prompts)
    at, at_mask = data.text_encoder.encode(audio_prompts)
    g = seq.geometry
    (h, w), tv, ta = seq.video_latent_hw, seq.video_latent_frames, seq.audio_latent_frames
    video = torch.zeros(b, g.video_channels, tv, h, w)
    audio = torch.zeros(b, g.audio_channels, ta)
    if first_frames is not None:
        video[:, :, :1] = first_frames[:, :, :1]
    if clip_latents is not None:
        video, audio = clip_latents
    meta = [
        {"key": f"prompt{i:03d}", "video_caption": p, "audio_caption": a}
        for i, (p, a) in enumerate(zip(prompts, audio_prompts))
    ]
    return AVBatch(
        video=video,
        video_mask=torch.ones(b, tv, dtype=torch.bool),
        audio=audio,
        audio_mask=torch.ones(b, ta, dtype=torch.bool),
        video_text=vt.float(),
        video_text_mask=vt_mask.bool(),
        audio_text=at.float(),
        audio_text_mask=at_mask.bool(),
        meta=meta,
    )


def _condition_latents(data: Any, decoders: Decoders, media: Path, n: int) -> tuple[Tensor, Tensor]:
    """Decode an image or clip file, fit it to the clip geometry, encode and normalise it (repeated n times)."""
    from klear_lightning.data.media import decode_media, fit_video

    clip = data.clip
    dec = decode_media(media, sample_rate=clip.sample_rate)
    frames = fit_video(dec.video, clip.height, clip.width) if dec.video is not None else None
    if frames is None:
        raise ConfigError(f"image / clip: {media} has no video stream")
    count = clip.frames
    frames = np.concatenate([frames, np.repeat(frames[-1:], max(0, count - len(frames)), axis=0)])[:count]
    video = data.video_codec.encode(torch.from_numpy(frames)[None]).float()
    wave = dec.audio if dec.audio is not None else np.zeros(clip.samples, np.float32)
    wave = np.pad(wave, (0, max(0, clip.samples - len(wave))))[: clip.samples]
    audio = data.audio_codec.encode(torch.from_numpy(np.ascontiguousarray(wave))[None]).float()
    video = normalize(video, decoders.video_mean, decoders.video_std)
    audio = normalize(audio, decoders.audio_mean, decoders.audio_std)
    return video.expand(n, *video.shape[1:]).clone(), audio.expand(n, *audio.shape[1:]).clone()


def inference_module(config: Path, ckpt_path: Path, use_ema: bool = True) -> tuple[KlearModule, LightningDataModule]:
    """KlearModule of a training config with a checkpoint's weights (EMA weights when stored and
    `use_ema`) and its data module set up for decoding, both on CPU."""
    check_checkpoint_path(ckpt_path, "ckpt_path")  # before the (slow) model and data set-up
    module, data = instantiate_model_and_data(config)
    module.configure_model()
    load_for_inference(ckpt_path, module.model, use_ema)
    module.eval()
    data.setup("predict")
    return module, data


def generate(
    config: Path,
    ckpt_path: Path,
    task: str,
    prompt: list[str],
    out: Path = Path("generated"),
    audio_prompt: list[str] | None = None,
    image: Path | None = None,
    clip: Path | None = None,
    steps: int = 25,
    solver: str = "euler",
    video_guidance: float = 1.0,
    audio_guidance: float = 1.0,
    modality_guidance: float = 0.0,
    seed: int = 0,
    use_ema: bool = True,
) -> list[Path]:
    """Generate media for `prompt`s with a trained checkpoint.

    Args:
        config: the training config of the checkpoint (model and data sections are used).
        ckpt_path: a `.ckpt` written by `klear fit`.
        task: t2v, t2a, t2av, ti2v, ti2av, v2a or a2v.
        prompt: video captions (one output per prompt); also the audio captions unless `audio_prompt`.
        out: output folder (`<key>.mp4`, `<key>.wav`, `<key>_spectrogram.png`, `generated.json`).
        audio_prompt: audio captions / transcripts, one per prompt.
        image: first frame for ti2v / ti2av (an image or any video file; its first frame is used).
        clip: conditioning clip for v2a (its video) / a2v (its audio).
        use_ema: use the EMA weights stored in the checkpoint when present.
    """
    recipe = get_task(task)
    if recipe.first_frame_condition and image is None:
        raise ConfigError(f"image: required for task {task}")
    needs_clip = Role.CONDITION in (recipe.video, recipe.audio)
    if needs_clip and clip is None:
        raise ConfigError(f"clip: required for task {task}")
    module, data = inference_module(config, ckpt_path, use_ema)
    decoders = data.decoders()
    module.decoders = decoders
    n = len(prompt)
    first = _condition_latents(data, decoders, image, n)[0] if image is not None else None
    cond = _condition_latents(data, decoders, clip, n) if needs_clip else None
    batch = prompt_batch(data, prompt, audio_prompt, first_frames=first, clip_latents=cond)
    sampler = SamplerConfig(
        solver=solver,
        steps=steps,
        video_guidance=video_guidance,
        audio_guidance=audio_guidance,
        modality_guidance=modality_guidance,
        seed=seed,
    )
    clips = module.generate(batch, task, sampler)
    written: list[Path] = []
    for c in clips:
        written += write_clip(c, out, f"{task}_{c.meta['key']}")
    (out / "generated.json").write_text(json.dumps([{**c.meta, "task": task} for c in clips], indent=2))
    for p in written:
        print(p)
    return written
