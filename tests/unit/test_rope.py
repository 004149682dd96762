import math

import pytest
import torch

from klear_lightning.models.rope import (
    StreamShapes,
    apply_rope,
    rope_angles,
    rope_table,
    stream_positions,
    video_lengths,
)

SHAPES = StreamShapes(video_grid=(2, 2, 3), audio_tokens=4, video_text_tokens=3, audio_text_tokens=2)


FULL = torch.tensor([2])  # one sample whose video fills the grid's 2 latent frames


def positions(
    mode: str, text_rope: bool = False, audio_patch: int = 2, time_scale: float = 1.0, video_frames: torch.Tensor = FULL
) -> dict[str, torch.Tensor]:
    """Positions of the first sample."""
    pos = stream_positions(
        SHAPES,
        video_frames,
        mode,
        video_latent_fps=4.0,
        audio_latent_fps=16.0,
        audio_patch=audio_patch,
        text_rope=text_rope,
        time_scale=time_scale,
    )
    return {s: p[0] for s, p in pos.items()}


def test_video_positions_are_the_grid_t_major():
    video = positions("offset")["video"]
    expected = [[t, h, w] for t in range(2) for h in range(2) for w in range(3)]
    assert video.tolist() == expected


def test_offset_audio_continues_after_the_last_video_frame():
    audio = positions("offset")["audio"]
    # max video t = 1, so audio token i sits at 2 + i in every section.
    assert audio.tolist() == [[2 + i] * 3 for i in range(4)]


def test_offset_audio_starts_after_each_samples_own_video_not_the_padded_grid():
    """Three samples in a batch padded to 5 latent frames: 2 valid frames, 5, and no video."""
    shapes = StreamShapes(video_grid=(5, 1, 1), audio_tokens=3, video_text_tokens=0, audio_text_tokens=0)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert video_lengths(mask).tolist() == [2, 5, 0]
    audio = stream_positions(shapes, video_lengths(mask), "offset", 4.0, 16.0, 1, False)["audio"]
    assert audio[:, :, 0].tolist() == [[2, 3, 4], [5, 6, 7], [0, 1, 2]]
    assert (audio == audio[..., :1]).all()
    # the aligned positions never depend on the video's length
    aligned = stream_positions(shapes, video_lengths(mask), "aligned", 4.0, 16.0, 1, False)["audio"]
    assert (aligned == aligned[:1]).all()


def test_aligned_audio_time_in_video_latent_frames_and_outside_grid():
    audio = positions("aligned")["audio"]
    # token i starts at i * 2 / 16 s = i / 8 s = i / 2 video latent frames (4 fps).
    assert audio[:, 0].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert (audio[:, 1:] == -1).all()


@pytest.mark.parametrize("text_rope", [False, True])
def test_text_positions(text_rope: bool):
    pos = positions("offset", text_rope=text_rope)
    expected = [[float(j) if text_rope else 0.0] * 3 for j in range(3)]
    assert pos["video_text"].tolist() == expected
    assert pos["audio_text"].shape == (2, 3)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="rope_mode"):
        positions("diagonal")


def test_aligned_same_instant_has_equal_temporal_phase():
    sections = (8, 4, 4)
    pos = positions("aligned", audio_patch=1)
    video = rope_angles(pos["video"], sections, 10000.0)
    audio = rope_angles(pos["audio"], sections, 10000.0)
    t_pairs = sections[0] // 2
    # video frame 1 starts at 0.25 s; audio token 4 (16 Hz, patch 1) also starts at 0.25 s.
    frame1 = video[1 * 6, :t_pairs]
    shapes = StreamShapes(video_grid=(2, 2, 3), audio_tokens=8, video_text_tokens=0, audio_text_tokens=0)
    pos8 = stream_positions(shapes, FULL, "aligned", 4.0, 16.0, 1, False)
    audio8 = rope_angles(pos8["audio"][0], sections, 10000.0)
    torch.testing.assert_close(audio8[4, :t_pairs], frame1, rtol=0, atol=0)
    # ...and a different instant a different phase; spatial phases never match a video patch.
    assert not torch.equal(audio8[5, :t_pairs], frame1)
    assert audio.shape == (4, 8)
    spatial_video = video[:, t_pairs:]
    assert not (spatial_video[:, None, :] == audio8[None, :, t_pairs:]).all(-1).any()


def test_each_section_rotates_with_its_own_coordinate():
    sections = (4, 6, 6)
    base = torch.tensor([[1.0, 2.0, 3.0]])
    a = rope_angles(base, sections, 100.0)
    moved = rope_angles(base + torch.tensor([[0.0, 5.0, 0.0]]), sections, 100.0)
    changed = (a != moved)[0]
    assert not changed[:2].any() and changed[2:5].all() and not changed[5:].any()
    # first frequency of each section is 1 (theta ** 0): angle = coordinate.
    assert a[0, 0] == 1.0 and a[0, 2] == 2.0 and a[0, 5] == 3.0


def _matrix_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Independent formulation: each pair times the 2x2 rotation matrix of its angle."""
    c, s = angles.double().cos()[:, None, :], angles.double().sin()[:, None, :]
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (N, 1, D/2, 2, 2)
    pairs = x.double().reshape(*x.shape[:-1], -1, 2, 1)
    return (rot @ pairs).reshape(x.shape)


def test_apply_rope_matches_complex_rotation_and_is_relative():
    sections = (4, 2, 2)
    pos = torch.tensor([[0.0, 1.0, 2.0], [3.5, -1.0, 4.0], [7.0, 2.0, 0.0]])
    angles = rope_angles(pos, sections, 10000.0)
    x = torch.randn(2, 3, 2, 8)
    out = apply_rope(x, rope_table(angles, torch.device("cpu")))
    torch.testing.assert_close(out.double(), _matrix_rope(x, angles))
    assert apply_rope(x.to(torch.bfloat16), rope_table(angles, torch.device("cpu"))).dtype == torch.bfloat16
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))

    # <R(p) q, R(p') k> depends on p - p' only.
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq: list[float], pk: list[float]) -> torch.Tensor:
        rq = rope_table(rope_angles(torch.tensor([pq]), sections, 10000.0), torch.device("cpu"))
        rk = rope_table(rope_angles(torch.tensor([pk]), sections, 10000.0), torch.device("cpu"))
        return (apply_rope(q, rq) * apply_rope(k, rk)).sum()

    torch.testing.assert_close(score([1, 2, 3], [0, 0, 1]), score([11, 7, 5], [10, 5, 3]))
    assert not math.isclose(score([1, 2, 3], [0, 0, 1]).item(), score([1, 2, 3], [0, 1, 1]).item())


@pytest.mark.parametrize("mode", ["offset", "aligned"])
def test_time_scale_multiplies_every_temporal_coordinate(mode: str):
    """Video t and aligned audio t are scaled, their spatial coordinates not; the offset audio id is
    a time in all three sections, so all three are scaled and stay equal (the paper's 1D rule)."""
    base = positions(mode, text_rope=True)
    scaled = positions(mode, text_rope=True, time_scale=3.0)
    torch.testing.assert_close(scaled["video"][:, 0], 3.0 * base["video"][:, 0])
    torch.testing.assert_close(scaled["video"][:, 1:], base["video"][:, 1:])
    if mode == "offset":
        torch.testing.assert_close(scaled["audio"], 3.0 * base["audio"])
        assert (scaled["audio"] == scaled["audio"][:, :1]).all()
    else:
        torch.testing.assert_close(scaled["audio"][:, 0], 3.0 * base["audio"][:, 0])
        torch.testing.assert_close(scaled["audio"][:, 1:], base["audio"][:, 1:])
    for stream in ("video_text", "audio_text"):
        torch.testing.assert_close(scaled[stream], base[stream])


def test_time_scale_lets_one_frame_apart_score_below_the_same_instant():
    """A query and key living on the fastest temporal pair: their rotated dot product one video
    frame apart is cos(time_scale) of the same-instant one (0.54 at 1, -0.99 at 3)."""
    sections = (4, 2, 2)
    q = torch.tensor([[[[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]]])
    shapes = StreamShapes(video_grid=(2, 1, 1), audio_tokens=8, video_text_tokens=0, audio_text_tokens=0)

    def contrast(scale: float) -> float:
        pos = stream_positions(shapes, FULL, "aligned", 4.0, 16.0, 1, False, time_scale=scale)
        rot_v = rope_table(rope_angles(pos["video"][0], sections, 10000.0), torch.device("cpu"))
        rot_a = rope_table(rope_angles(pos["audio"][0], sections, 10000.0), torch.device("cpu"))
        query = apply_rope(q, rot_v[:1])  # video frame 0
        same, next_frame = apply_rope(q, rot_a[:1]), apply_rope(q, rot_a[4:5])  # audio at 0 and at frame 1
        return ((query * next_frame).sum() / (query * same).sum()).item()

    assert contrast(1.0) == pytest.approx(math.cos(1.0), abs=1e-6)
    assert contrast(3.0) == pytest.approx(math.cos(3.0), abs=1e-6)
