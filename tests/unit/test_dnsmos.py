"""`klear curate`'s MOS filter: DNSMOS P.835 as shipped in `speechmos`, scored like the package's own
`dnsmos.run` (parity), lower for noise-masked speech than for the same speech clean."""

import shutil

import numpy as np
import pytest

from benchmarks.curate import inject, room_tone
from klear_lightning.curate.dnsmos import Dnsmos, shipped_dnsmos


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    if shutil.which("flite") is None:
        pytest.skip("flite is not on PATH")
    from klear_lightning.data.syncworld.clip import SyncWorldConfig
    from klear_lightning.data.syncworld.generate import HoldoutRule, make_clip

    clip = make_clip("speech_single", "train", 0, 1, SyncWorldConfig(duration=3.0, fps=16, size=64), HoldoutRule(()))
    return room_tone(clip.audio, np.random.default_rng(0))


@pytest.mark.flite
def test_dnsmos_matches_speechmos_and_rates_noisy_speech_lower(speech):
    from speechmos import dnsmos as official

    noisy = inject("noise", np.zeros((1, 1, 1, 3), np.uint8), speech, 16000, np.random.default_rng(1))[1]
    # 3 s (repeated to the 9.01 s window) and 12.5 s (four windows 1 s apart, averaged)
    long = np.concatenate([speech, noisy, speech, noisy, speech[: speech.size // 6]])
    ours = Dnsmos(shipped_dnsmos())
    got = {}
    for name, audio in {"clean": speech, "noisy": noisy, "long": long}.items():
        q = ours(audio, 16000)
        ref = official.run(np.clip(audio, -1, 1).astype(np.float32), 16000)
        assert (q.sig, q.bak, q.ovrl) == pytest.approx((ref["sig_mos"], ref["bak_mos"], ref["ovrl_mos"]), abs=1e-4)
        got[name] = q.ovrl
    assert got["clean"] > got["noisy"] + 0.3, got  # white noise at 0-5 dB SNR
    # another rate is resampled to DNSMOS's 16 kHz first
    assert ours(speech[::2].copy(), 8000).ovrl == pytest.approx(got["clean"], abs=0.25)


def test_bad_mos_settings_are_one_config_error(tmp_path):
    from klear_lightning.curate.config import CurateConfig
    from klear_lightning.curate.job import check_models
    from klear_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^min_mos: must be in \[1, 5\] \(DNSMOS's scale\), got 7$"):
        CurateConfig(min_mos=7)
    (tmp_path / "dnsmos.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ConfigError, match=r"^dnsmos: could not load .*dnsmos\.onnx: "):
        check_models(CurateConfig(dnsmos=str(tmp_path / "dnsmos.onnx"), transcribe=False))
