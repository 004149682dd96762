"""The MOS column of Tables 2 and 3. Verse-Bench's code (`calculate_metrics.py`) has one learned audio
quality predictor, Audiobox Aesthetics (CE / CU / PC / PQ, `audiobox-aesthetics`), and no MOS predictor;
the paper's text naming its MOS predictor was not available to this project. No MOS metric is
implemented yet, so there is nothing to compare; `audiobox-aesthetics` itself installs from PyPI but
imports torchaudio, which does not load against torch 2.13 CPU.
"""

from __future__ import annotations

from benchmarks.parity import ParityResult, skipped

EXTRACTOR = "mos_predictor"


def check() -> ParityResult:
    return skipped(
        EXTRACTOR,
        "audiobox-aesthetics (Verse-Bench's only learned quality predictor)",
        (),
        "no MOS metric is implemented: the paper's MOS predictor is unidentified here; audiobox-aesthetics needs torchaudio",
    )
