import numpy as np
import pytest

from klear_lightning.data.media import (
    MediaError,
    decode_flac,
    decode_media,
    encode_av,
    encode_flac,
    encode_video,
    fit_video,
    resample_audio,
    retime,
    write_spectrogram_png,
)
from tests.helpers.samples import smooth_frames


def test_video_round_trip_within_codec_tolerance():
    frames = smooth_frames(12, 32, 48)
    d = decode_media(encode_video(frames, 8.0), "clip")
    assert d.video.shape == frames.shape and d.fps == pytest.approx(8.0)
    assert np.abs(d.video.astype(int) - frames).mean() < 3.0
    np.testing.assert_allclose(d.frame_times, np.arange(12) / 8.0)


def test_video_encoding_is_deterministic():
    frames = smooth_frames(8, 32, 32)
    assert len({encode_video(frames, 8.0) for _ in range(200)}) == 1


def test_flac_round_trip_is_sample_exact_for_16_bit_values():
    wave = (np.random.default_rng(0).integers(-20000, 20000, 16001) / 32768).astype(np.float32)
    back, sr = decode_flac(encode_flac(wave, 16000), "a")
    assert sr == 16000 and back.shape == wave.shape
    assert np.array_equal(back, wave)


def test_mp4_with_audio_decodes_both_and_resamples():
    frames = smooth_frames(16, 32, 32)
    t = np.arange(16000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    d = decode_media(encode_av(frames, 8.0, wave, 16000), "av", sample_rate=8000)
    assert d.video.shape[0] == 16 and d.sample_rate == 8000
    assert abs(d.audio.shape[0] - 8000) < 1024
    spec = np.abs(np.fft.rfft(d.audio[1000:7000]))
    assert abs(np.argmax(spec) * 8000 / 6000 - 440) < 5


def test_garbage_is_a_clear_error_naming_the_file():
    with pytest.raises(MediaError, match="broken.mp4"):
        decode_media(b"not a video at all" * 50, "broken.mp4")


def test_fit_video_covers_and_center_crops():
    frames = np.zeros((2, 20, 60, 3), np.uint8)
    frames[:, :, 25:35] = 255
    out = fit_video(frames, 32, 32)
    assert out.shape == (2, 32, 32, 3)
    assert out[0, 16, 16, 0] == 255 and out[0, 16, 0, 0] == 0


def test_retime_handles_variable_frame_rate():
    frames = np.arange(4, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
    out = retime(frames, np.array([0.0, 0.1, 0.35, 0.4]), fps=10.0, count=5)
    assert out[:, 0, 0, 0].tolist() == [0, 1, 1, 1, 3]


def test_resample_audio_length_and_spectrogram_png(tmp_path):
    wave = np.random.default_rng(0).standard_normal(44100).astype(np.float32) * 0.1
    assert resample_audio(wave, 44100, 16000).shape == (16000,)
    png = write_spectrogram_png(wave, 44100, tmp_path / "s.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
