"""SenseVoiceSmall (`wer_sensevoice_versebench`): the project runs FunASR's own model code, as Verse-Bench
does, so there is no re-implemented network to compare; what the project adds (Verse-Bench's
normalisation, per-utterance mean, the speech routing) is tested in tests/unit/test_wer.py and
tests/integration/test_versebench.py. Running FunASR here is not possible: `funasr` installs from PyPI, but its
front end imports torchaudio at run time, and PyPI's torchaudio wheels are CUDA builds that fail to load
against torch 2.13 CPU. This check reports that instead of a number.
"""

from __future__ import annotations

import importlib.util

from benchmarks.parity import ParityResult, skipped

EXTRACTOR = "sensevoice_small"
FORMATS = (
    "SenseVoiceSmall directory as FunASR reads it (model.pt, config.yaml, am.mvn, tokenizer), plus an fsmn-vad directory",
)


def _torchaudio_loads() -> bool:
    try:
        import torchaudio  # noqa: F401
    except Exception:  # noqa: BLE001 (a CUDA wheel raises OSError / ImportError / RuntimeError)
        return False
    return True


def check() -> ParityResult:
    if importlib.util.find_spec("funasr") is None:
        why = "funasr is not installed (optional extra; it needs a torchaudio matching torch, which PyPI lacks for 2.13 CPU)"
    elif not _torchaudio_loads():
        why = "funasr is installed but torchaudio does not load against this torch (PyPI's wheel is a CUDA build)"
    else:
        why = "the project runs FunASR's own SenseVoice code (no re-implementation): nothing to compare"
    return skipped(EXTRACTOR, "funasr (FunASR's SenseVoiceSmall, used as is)", FORMATS, why)
