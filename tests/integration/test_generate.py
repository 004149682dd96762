"""`klear generate`: a checkpoint + config -> mp4 (with audio), wav and spectrogram png, for each task kind."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from klear_lightning.cli import main
from klear_lightning.data.media import decode_media, encode_av
from klear_lightning.media import MediaClip, write_clip
from tests.helpers.checkpoints import tiny_syncworld_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    config, ckpt = tiny_syncworld_checkpoint(root)
    frames = np.zeros((8, 40, 48, 3), np.uint8)
    frames[..., 0] = 200
    clip = root / "cond.mp4"
    clip.write_bytes(encode_av(frames, 8.0, 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000))
    return root, config, ckpt, clip


@pytest.mark.slow
@pytest.mark.parametrize("task", ["t2av", "ti2v", "v2a", "t2a"])
def test_generate_writes_media(trained, task):
    root, config, ckpt, clip = trained
    out = root / f"out_{task}"
    args = [
        "generate",
        "--config",
        str(config),
        "--ckpt_path",
        str(ckpt),
        "--task",
        task,
        "--prompt",
        "[a red ball bounces, a blue cube]",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    if task == "ti2v":
        args += ["--image", str(clip)]
    if task == "v2a":
        args += ["--clip", str(clip)]
    main(args)
    names = sorted(p.name for p in out.iterdir())
    has_video, has_audio = task != "t2a", task != "ti2v"
    assert (f"{task}_prompt000.mp4" in names) == has_video
    assert (f"{task}_prompt001.wav" in names) == has_audio
    assert (f"{task}_prompt000_spectrogram.png" in names) == has_audio
    if has_video:
        dec = decode_media(out / f"{task}_prompt000.mp4")
        assert dec.video.shape[1:] == (32, 32, 3) and dec.video.shape[0] == 8
        assert (dec.audio is not None) == has_audio
    if has_audio:
        wave, sr = sf.read(out / f"{task}_prompt000.wav")
        assert sr == 16000 and wave.shape == (16000,)


def test_generate_requires_condition_inputs(trained, capsys):
    _, config, ckpt, _ = trained
    with pytest.raises(SystemExit) as done:
        main(["generate", "--config", str(config), "--ckpt_path", str(ckpt), "--task", "ti2av", "--prompt", "[x]"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: image: required for task ti2av"


def test_write_clip_video_only_and_audio_only(tmp_path):
    video = MediaClip(video=torch.zeros(4, 16, 16, 3, dtype=torch.uint8), fps=4.0, audio=None, sample_rate=16000)
    assert [p.name for p in write_clip(video, tmp_path, "v")] == ["v.mp4"]
    audio = MediaClip(video=None, fps=4.0, audio=torch.zeros(1600), sample_rate=16000)
    assert [p.name for p in write_clip(audio, tmp_path, "a")] == ["a.wav", "a_spectrogram.png"]


def test_inference_says_when_a_checkpoint_has_no_ema_weights(trained, tmp_path, capsys):
    from klear_lightning.generate import inference_module

    _, config, ckpt, _ = trained
    module, _ = inference_module(config, ckpt)
    err = capsys.readouterr().err
    assert f"{ckpt} holds no EMA weights; using its training weights" in err
    weights = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(p, weights[f"model.{n}"]) for n, p in module.model.state_dict().items())

    shadow = {k.removeprefix("model."): v + 1.0 for k, v in weights.items()}
    with_ema = tmp_path / "ema.ckpt"
    torch.save({"state_dict": weights, "callbacks": {"EMA": {"shadow": shadow, "updates": 3}}}, with_ema)
    module, _ = inference_module(config, with_ema)
    assert "EMA" not in capsys.readouterr().err
    assert all(torch.equal(p, shadow[n]) for n, p in module.model.state_dict().items())
    inference_module(config, ckpt, use_ema=False)
    assert "EMA" not in capsys.readouterr().err
