"""The MOS filter of `klear curate`: DNSMOS P.835 (Microsoft's non-intrusive speech-quality model), the
ONNX network and its MOS mapping as shipped in the `speechmos` package (MIT; no download).

DNSMOS rates 9.01 s windows of 16 kHz speech: a shorter clip is repeated (doubled until long enough, as
`speechmos.dnsmos` does), a longer one is rated in windows 1 s apart and averaged. Each window gives the
signal (SIG), background (BAK) and overall (OVRL) quality on the 1-5 MOS scale. Only speech is rated:
the model was trained on speech, and singing or sound scenes have no meaningful DNSMOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from klear_lightning.metrics.audio_prep import resample

SAMPLE_RATE = 16000
WINDOW = int(9.01 * SAMPLE_RATE)


def shipped_dnsmos() -> Path:
    """The DNSMOS P.835 network inside the `speechmos` package."""
    return Path(str(files("speechmos") / "dnsmos_models" / "sig_bak_ovr.onnx"))


@dataclass(frozen=True)
class SpeechQuality:
    """DNSMOS P.835 scores of one clip (1-5)."""

    sig: float
    bak: float
    ovrl: float


class Dnsmos:
    """One ONNX session (one thread: Ray runs one scorer per core)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort
        from speechmos.dnsmos import DNSMOS  # the package's mapping of the raw outputs to MOS

        self.to_mos = DNSMOS.get_polyfit_val
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        [inp] = self.session.get_inputs()
        if inp.shape[-1] != WINDOW:
            raise ValueError(f"expects {inp.shape[-1]} input samples, DNSMOS P.835 takes {WINDOW}")
        self.input = inp.name

    def __call__(self, audio: np.ndarray, sr: int) -> SpeechQuality:
        wave = np.clip(resample(torch.from_numpy(audio.astype(np.float32)), sr, SAMPLE_RATE).numpy(), -1, 1)
        if not wave.size:
            raise ValueError("no audio to rate")
        while wave.size < WINDOW:
            wave = np.concatenate([wave, wave])
        hops = int(np.floor(wave.size / SAMPLE_RATE) - WINDOW / SAMPLE_RATE) + 1
        windows = np.stack([wave[i * SAMPLE_RATE : i * SAMPLE_RATE + WINDOW] for i in range(hops)])
        raw = np.concatenate(
            [self.session.run(None, {self.input: windows[i : i + 8].astype(np.float32)})[0] for i in range(0, hops, 8)]
        )
        sig, bak, ovrl = (np.mean(v) for v in self.to_mos(None, raw[:, 0], raw[:, 1], raw[:, 2], False))
        return SpeechQuality(float(sig), float(bak), float(ovrl))
