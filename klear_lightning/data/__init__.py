"""Data: sample schema, media I/O, WebDataset shards, `klear prepare`, the latent cache and the AVDataModule.

`AVDataModule` is imported on first use (`klear_lightning.data.AVDataModule`), so importing this
package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klear_lightning.data.datamodule import AVDataModule

__all__ = ["AVDataModule"]


def __getattr__(name: str) -> Any:
    if name == "AVDataModule":
        from klear_lightning.data.datamodule import AVDataModule

        return AVDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
