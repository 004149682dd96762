"""ImageBind (`ib_score_avbench`, CC-BY-NC 4.0, an optional extra): the project runs Meta's own
`imagebind` package, not a re-implementation, and that package is not on PyPI (the PyPI name `imagebind`,
0.0.1.dev0, is an empty placeholder), so it cannot be installed here to compare the project's
preprocessing (`metrics/imagebind.py`: frames, crops, fbank clips) with `imagebind.data`'s.
"""

from __future__ import annotations

from benchmarks.parity import ParityResult, skipped

EXTRACTOR = "imagebind_huge"
FORMATS = ("imagebind_huge.pth: the ImageBindModel state dict (read through the allow-list reader)",)


def check() -> ParityResult:
    try:
        import imagebind.models.imagebind_model  # noqa: F401
    except ImportError:
        return skipped(
            EXTRACTOR,
            "Meta's imagebind package (GitHub only)",
            FORMATS,
            "Meta's imagebind is not on PyPI (PyPI's `imagebind` 0.0.1.dev0 is a placeholder); install it from its repository",
        )
    return skipped(
        EXTRACTOR,
        "Meta's imagebind package",
        FORMATS,
        "the project runs Meta's own ImageBind network: the preprocessing comparison is not written yet",
    )
