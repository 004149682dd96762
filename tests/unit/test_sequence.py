import pytest

from klear_lightning.sequence import ClipSpec, LatentGeometry, SequenceSpec


def test_paper_like_geometry():
    # 44.1 kHz audio with a 1024x codec -> ~43 Hz latents; causal 4x video codec with 16x spatial.
    clip = ClipSpec(duration=4.0, fps=12.25, height=256, width=256, sample_rate=44100)
    geo = LatentGeometry(
        video_channels=16,
        video_temporal_factor=4,
        video_spatial_factor=16,
        video_causal=True,
        audio_channels=64,
        audio_hop=1764,
    )
    seq = SequenceSpec(clip, geo, video_patch=1, audio_patch=1)
    assert seq.video_latent_frames == 1 + (49 - 1) // 4
    assert seq.video_latent_hw == (16, 16)
    assert seq.audio_latent_frames == 100
    assert seq.video_tokens == 13 * 16 * 16


def test_tiny_geometry_and_rates():
    seq = SequenceSpec(ClipSpec(), LatentGeometry(4, 1, 4, False, 8, 320), video_patch=2, audio_patch=2)
    assert seq.video_latent_frames == 16 and seq.video_latent_hw == (8, 8)
    assert seq.video_tokens == 16 * 4 * 4
    assert seq.audio_latent_frames == 100 and seq.audio_tokens == 50
    assert seq.video_latent_fps == 8.0 and seq.audio_latent_fps == 50.0


def test_non_tiling_clip_is_a_config_error():
    with pytest.raises(ValueError, match="clip.height"):
        SequenceSpec(ClipSpec(height=30), LatentGeometry(4, 1, 4, False, 8, 320))
    with pytest.raises(ValueError, match="audio_hop"):
        SequenceSpec(ClipSpec(), LatentGeometry(4, 1, 4, False, 8, 333))
