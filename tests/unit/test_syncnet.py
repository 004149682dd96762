import math
import os

import pytest
import torch

from klear_lightning.media import MediaClip
from klear_lightning.metrics import (
    REGISTRY,
    BuildContext,
    MetricUnavailable,
    MetricUndefined,
    face,
    syncnet,
)
from klear_lightning.metrics.nets import s3fd
from klear_lightning.metrics.nets import syncnet as syncnet_net
from klear_lightning.metrics.suite import MetricsConfig, MetricSuite
from klear_lightning.safe_pickle import UnsafeFileError


def test_lse_formula_on_hand_made_distances():
    dists = torch.full((2, 31), 10.0)
    dists[:, 20] = torch.tensor([2.0, 4.0])  # mean 3 at shift index 20
    dists[:, 5] = torch.tensor([8.0, 8.0])  # mean 8
    conf, dist, offset = syncnet.lse_scores(dists)
    # mean over frames: 3 at 20, 8 at 5, 10 elsewhere (29 entries) -> median 10, min 3
    assert dist == pytest.approx(3.0)
    assert conf == pytest.approx(10.0 - 3.0)
    assert offset == 15 - 20


@pytest.mark.parametrize("shift", [-4, 0, 3, 7])
def test_offset_search_recovers_known_shift(shift):
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(40, 32, generator=g)
    frames = torch.arange(20) + 10
    video = audio[frames + shift]  # video frame t matches audio frame t + shift
    conf, dist, offset = syncnet.lse_scores(syncnet.shift_distances(video, audio[10:]))
    assert offset == -shift
    if shift >= 0:  # every matching audio row lies inside the passed audio: exact match
        assert dist == pytest.approx(0.0, abs=1e-4)
    assert conf > 1.0


def test_shift_distances_pad_with_zeros_like_syncnet_python():
    a = torch.ones(3, 2)
    v = torch.ones(3, 2)
    d = syncnet.shift_distances(v, a, vshift=1)
    # frame 0 vs padded zero row, itself, next row
    assert torch.allclose(d[0], torch.tensor([math.sqrt(2), 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(d[2], torch.tensor([0.0, 0.0, math.sqrt(2)]), atol=1e-5)


def test_mfcc_matches_python_speech_features():
    t = torch.arange(1600, dtype=torch.float64) / 16000
    wave = 3000 * torch.sin(2 * math.pi * 440 * t) + 1000 * torch.sin(2 * math.pi * 1000 * t)
    feat = syncnet.mfcc(wave.float())
    assert feat.shape == (13, 9)  # 1 + ceil((1600 - 400) / 160)
    # python_speech_features 0.6 mfcc(wave, 16000)[3], computed with that package
    ref = torch.tensor(
        [
            17.545208,
            21.053866,
            -5.948978,
            -23.991209,
            -22.01593,
            -10.031489,
            -6.684401,
            -17.532012,
            -23.100453,
            -7.658479,
            22.320252,
            39.242306,
            28.20174,
        ]
    )
    assert torch.allclose(feat[:, 3], ref, atol=1e-3)


def test_crop_faces_shape_and_bgr():
    frames = torch.zeros(3, 64, 64, 3, dtype=torch.uint8)
    frames[..., 0] = 200  # red in RGB
    boxes = torch.tensor([[16.0, 16.0, 48.0, 48.0]]).expand(3, 4)
    crops = syncnet.crop_faces(frames, boxes)
    assert crops.shape == (3, 3, 224, 224)
    centre = crops[:, :, 112, 112]
    assert torch.allclose(centre[2], torch.full((3,), 200.0))  # red lands in the last (BGR) channel
    assert torch.allclose(centre[0], torch.zeros(3))


def _speaking_clip(annotated: bool) -> MediaClip:
    g = torch.Generator().manual_seed(2)
    video = torch.randint(0, 256, (12, 64, 64, 3), generator=g, dtype=torch.uint8)
    meta = {"key": "s0"}
    if annotated:
        meta["annotation"] = {"faces": [{"speaker": "center", "box": [10, 12, 50, 52]}]}
    return MediaClip(
        video=video, fps=25.0, audio=0.1 * torch.randn(12 * 640, generator=g), sample_rate=16000, meta=meta
    )


def test_lse_metric_loads_saved_weights_and_counts_faceless_clips(tmp_path):
    net = syncnet_net.SyncNet().eval()
    torch.save(net.state_dict(), tmp_path / "syncnet_v2.model")
    with pytest.raises(MetricUnavailable, match="metrics.checkpoints.syncnet"):
        REGISTRY["lse_syncnet"].build(BuildContext.create({}))
    metric = REGISTRY["lse_syncnet"].build(BuildContext.create({"syncnet": str(tmp_path / "syncnet_v2.model")}))
    metric.update([_speaking_clip(True), _speaking_clip(False)])
    out = metric.compute()
    assert int(metric.n) == 1 and float(out["lse_no_face"]) == 1.0
    # the metric equals scoring the annotated track directly with the same network
    clip = _speaking_clip(True)
    box = torch.tensor([12.0, 10.0, 52.0, 50.0]).expand(12, 4)
    conf, dist, _ = syncnet.score_track(
        syncnet_net.load_syncnet(tmp_path / "syncnet_v2.model"),
        syncnet.crop_faces(clip.video, box),
        clip.audio * 32768.0,
    )
    assert float(out["lse_c_syncnet"]) == pytest.approx(conf, rel=1e-4)
    assert float(out["lse_d_syncnet"]) == pytest.approx(dist, rel=1e-4)
    faceless = REGISTRY["lse_syncnet"].build(BuildContext.create({"syncnet": str(tmp_path / "syncnet_v2.model")}))
    faceless.update([_speaking_clip(False)])
    with pytest.raises(MetricUndefined, match="1 without"):
        faceless.compute()


def test_s3fd_layout_priors_and_decode(tmp_path):
    net = s3fd.S3FD().eval()
    torch.save(net.state_dict(), tmp_path / "sfd_face.pth")
    loaded = s3fd.load_s3fd(tmp_path / "sfd_face.pth")
    assert "L2Norm3_3.weight" in loaded.state_dict() and "vgg.33.weight" in loaded.state_dict()
    with torch.no_grad():
        loc, score, sizes = loaded(torch.randn(1, 3, 64, 96))
    p = s3fd.priors((64, 96), sizes)
    assert p.shape[0] == loc.shape[1] == score.shape[1] == sum(h * w for h, w in sizes)
    assert sizes[0] == (16, 24)  # stride 4
    assert torch.allclose(p[0], torch.tensor([2 / 96, 2 / 64, 16 / 96, 16 / 64]))
    boxes = s3fd.decode(torch.zeros(1, 4), p[:1])
    assert torch.allclose(boxes[0], torch.tensor([-6 / 96, -6 / 64, 10 / 96, 10 / 64]))


def test_nms_and_track_gap_filling():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float)
    kept = s3fd.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3)
    assert kept.tolist() == [0, 2]

    class Scripted(face.FaceDetector):
        def detect(self, frames):
            ids = [int(f[0, 0, 0]) for f in frames]
            return [None if i in (1, 2) else torch.tensor([float(i), 0.0, i + 40.0, 40.0]) for i in ids]

    frames = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 4, 4, 3)
    det = Scripted(net=s3fd.S3FD())
    assert det.track(frames, max_missing=0.1) is None  # 2 of 10 frames missing
    track = det.track(frames, max_missing=0.2)
    assert track is not None and track.shape == (10, 4)
    # square 40 px boxes whose centre follows the (median-filtered) detections
    assert torch.allclose(track[:, 2] - track[:, 0], torch.full((10,), 40.0))
    assert torch.allclose(track[:, 1], torch.zeros(10))
    assert track[0, 0] == 0.0 and track[:, 0].diff().min() >= 0


def test_tracks_follow_each_face_by_overlap():
    """Two faces that move and one that shows up in 3 frames of 20: two tracks, each staying with its
    own face even in a frame where the detector lists them the other way round or misses one."""

    class Scripted(face.FaceDetector):
        def detect_all(self, frames):
            out = []
            for t in range(frames.shape[0]):
                left = torch.tensor([10.0 + t, 10.0, 50.0 + t, 50.0])
                right = torch.tensor([100.0 - t, 12.0, 140.0 - t, 52.0])
                boxes = [right, left] if t % 2 else [left, right]
                if t == 7:
                    boxes = [right]
                if t in (3, 4, 5):
                    boxes.append(torch.tensor([60.0, 100.0, 90.0, 130.0]))
                out.append(torch.stack(boxes))
            return out

    frames = torch.zeros(20, 160, 160, 3, dtype=torch.uint8)
    tracks = Scripted(net=s3fd.S3FD()).tracks(frames)
    assert len(tracks) == 2
    left, right = sorted(tracks, key=lambda b: float(b[0, 0]))
    t = torch.arange(20.0)
    # each track's centre follows its own face (x = 30 + t and 120 - t) in every frame
    assert torch.allclose((left[:, 0] + left[:, 2]) / 2, 30 + t, atol=1.5) and torch.allclose(
        (right[:, 0] + right[:, 2]) / 2, 120 - t
    )
    assert Scripted(net=s3fd.S3FD()).detect(frames)[1].tolist() == [99.0, 12.0, 139.0, 52.0]  # best = first


def test_small_videos_are_scaled_up_for_the_detector(tmp_path):
    net = s3fd.S3FD().eval()
    assert len(face.FaceDetector(net).detect_all(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))) == 2


def test_detector_runs_batched_on_saved_weights(tmp_path):
    net = s3fd.S3FD().eval()
    with torch.no_grad():  # make every prior a confident face at zero offset
        for conv in net.conf:
            conv.weight.zero_()
            conv.bias.zero_()
            conv.bias[-1] = 10.0
        for conv in net.loc:
            conv.weight.zero_()
            conv.bias.zero_()
    torch.save(net.state_dict(), tmp_path / "sfd_face.pth")
    det = face.FaceDetector(s3fd.load_s3fd(tmp_path / "sfd_face.pth"), batch=2)
    found = det.detect(torch.zeros(3, 256, 256, 3, dtype=torch.uint8))
    assert len(found) == 3 and all(b is not None for b in found)
    assert all(torch.allclose(b, found[0]) for b in found)
    empty = face.FaceDetector(s3fd.load_s3fd(tmp_path / "sfd_face.pth"), threshold=1.1)
    assert empty.track(torch.zeros(2, 256, 256, 3, dtype=torch.uint8)) is None
    assert torch.equal(
        face.median_filter(torch.tensor([[1.0], [9.0], [2.0], [3.0]]), 3)[:, 0], torch.tensor([1.0, 2.0, 3.0, 3.0])
    )


def test_annotation_boxes_convert_yx_to_xy():
    frames = torch.zeros(5, 64, 64, 3, dtype=torch.uint8)
    tracks = face.annotation_boxes({"annotation": {"faces": [{"box": [1, 2, 3, 4]}]}}, frames)
    assert len(tracks) == 1 and tracks[0].shape == (5, 4)
    assert tracks[0][0].tolist() == [2.0, 1.0, 4.0, 3.0]
    assert face.annotation_boxes({}, frames) == []


def test_annotation_boxes_follow_a_resized_clip():
    """A face drawn at 64 px and the clip resized to 32 px (as the demo's DataModule does): the
    box lands on the face in the small frames, not on the 64 px coordinates."""
    big = torch.zeros(1, 3, 64, 64)
    big[:, 0, 24:56, 16:40] = 255.0  # red face, box [y0, x0, y1, x1] = [24, 16, 56, 40]
    small = torch.nn.functional.interpolate(big, size=(32, 32), mode="area")
    frames = small.permute(0, 2, 3, 1).round().to(torch.uint8).expand(4, -1, -1, -1)
    meta = {"annotation": {"frame_size": [64, 64], "faces": [{"box": [24, 16, 56, 40]}]}}
    (track,) = face.annotation_boxes(meta, frames)
    assert track[0].tolist() == [8.0, 12.0, 20.0, 28.0]
    x0, y0, x1, y1 = (int(v) for v in track[0])
    assert (frames[:, y0:y1, x0:x1, 0] == 255).all()  # every pixel inside the box is the face
    assert frames[..., 0].sum() == frames[:, y0:y1, x0:x1, 0].sum()  # and the face is all inside


def test_parity_with_official_syncnet_and_s3fd():
    from benchmarks.parity import s3fd as s3fd_parity
    from benchmarks.parity import syncnet as syncnet_parity

    for check in (syncnet_parity.check, s3fd_parity.check):
        result = check()
        assert result.passed, result


def test_mfcc_matches_the_python_speech_features_package():
    psf = pytest.importorskip("python_speech_features", reason="python_speech_features (test extra) not installed")
    g = torch.Generator().manual_seed(3)
    wave = (torch.rand(8000, generator=g) * 40000 - 20000).round()
    ref = torch.from_numpy(psf.mfcc(wave.numpy().astype("int16"), 16000)).T.float()
    ours = syncnet.mfcc(wave)
    assert ours.shape == ref.shape
    assert float((ours - ref).abs().max() / ref.abs().max()) <= 1e-4


def test_face_scenes_are_runs_of_two_seconds():
    box = torch.tensor([0.0, 0.0, 4.0, 4.0])
    boxes = [box] * 50 + [None] + [box] * 49 + [None, None] + [box] * 60
    scenes = syncnet.face_scenes(boxes, 50)
    assert [(first, b.shape[0]) for first, b in scenes] == [(0, 50), (102, 60)]


def _long_speaking_clip(frames: int) -> MediaClip:
    g = torch.Generator().manual_seed(4)
    video = torch.randint(0, 256, (frames, 64, 64, 3), generator=g, dtype=torch.uint8)
    meta = {"key": f"long{frames}", "annotation": {"faces": [{"speaker": "center", "box": [10, 12, 50, 52]}]}}
    return MediaClip(
        video=video, fps=25.0, audio=0.1 * torch.randn(frames * 640, generator=g), sample_rate=16000, meta=meta
    )


def test_lse_versebench_scores_scenes_and_drops_short_or_offset_clips(tmp_path, monkeypatch):
    monkeypatch.setattr(syncnet, "VERSEBENCH_MIN_SCENE_FRAMES", 8)  # 2 s scenes, shortened for CPU time
    # SyncNet itself is checked by the parity test; here a stand-in scores what the protocol feeds it
    offset = {"frames": 0}

    def fake_score(net, lips, audio):
        return float(lips.mean()) + audio.shape[0] + float(audio.abs().sum()) * 1e-9, 0.0, offset["frames"]

    monkeypatch.setattr(syncnet, "score_track", fake_score)
    path = tmp_path / "syncnet_v2.model"
    torch.save(syncnet_net.SyncNet().state_dict(), path)
    metric = REGISTRY["lse_versebench"].build(BuildContext.create({"syncnet": str(path)}))
    clip, short = _long_speaking_clip(10), _long_speaking_clip(7)
    metric.update([clip, short])
    out = metric.compute()
    assert int(metric.n) == 1 and float(out["lse_versebench_dropped"]) == 1.0
    # one scene of 10 frames: crop scale 0.3 with the frame's box, audio from its first to its last frame
    box = torch.tensor([12.0, 10.0, 52.0, 50.0]).expand(10, 4)
    expected = fake_score(None, syncnet.crop_faces(clip.video, box, scale=0.3), (clip.audio * 32768.0)[: 9 * 640])[0]
    assert float(out["lse_c_versebench"]) == pytest.approx(expected, rel=1e-9)
    wide = fake_score(None, syncnet.crop_faces(clip.video, box, scale=0.4), (clip.audio * 32768.0)[: 9 * 640])[0]
    assert wide != pytest.approx(expected, rel=1e-6)  # syncnet_python's 0.4 crop would be seen
    # a scene whose offset is 14 frames or more drops its clip; 13 does not
    offset["frames"] = -13
    kept = REGISTRY["lse_versebench"].build(BuildContext.create({"syncnet": str(path)}))
    kept.update([clip])
    assert int(kept.n) == 1
    offset["frames"] = -14
    dropped = REGISTRY["lse_versebench"].build(BuildContext.create({"syncnet": str(path)}))
    dropped.update([clip])
    with pytest.raises(MetricUndefined, match="1 dropped"):
        dropped.compute()


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("key, name", [("syncnet", "syncnet_v2.model"), ("s3fd", "sfd_face.pth")])
def test_malicious_weights_are_refused_and_reported_not_computed(tmp_path, key, name):
    marker = tmp_path / "ran"
    good = tmp_path / "syncnet_v2_good.model"
    torch.save(syncnet_net.SyncNet().state_dict(), good)
    bad = tmp_path / name
    state = (syncnet_net.SyncNet() if key == "syncnet" else s3fd.S3FD()).state_dict()
    state["extra"] = _Payload(str(marker))
    torch.save(state, bad)
    loader = syncnet_net.load_syncnet if key == "syncnet" else s3fd.load_s3fd
    with pytest.raises(UnsafeFileError, match=str(bad)):
        loader(bad)
    checkpoints = {"syncnet": str(good), key: str(bad)}
    suite = MetricSuite(
        MetricsConfig(metrics=["lse_syncnet", "lse_versebench"], checkpoints=checkpoints, tasks=["t2av"])
    )
    assert set(suite.skipped) == {"lse_syncnet", "lse_versebench"}
    assert (
        f"metrics.checkpoints.{key}" in suite.skipped["lse_versebench"] and str(bad) in suite.skipped["lse_versebench"]
    )
    assert not marker.exists()
