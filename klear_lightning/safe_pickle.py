"""Reading pickled files from outside the project without running their code.

Every file a user points us at (a checkpoint, an extractor's official weights, the metadata of a
sharded checkpoint folder) may contain a pickle, and unpickling executes whatever callables the
pickle names. Both readers below accept only globals on an explicit allow-list and refuse anything
else with an `UnsafeFileError` naming the file and the refused global:

- `load_torch_file`: torch's own restricted unpickler (`torch.load(weights_only=True)`), with extra
  allowed globals and with *opaque* names: a foreign class that official checkpoints embed (e.g. an
  OmegaConf config beside the weights) is rebuilt as an inert `Opaque` record holding the state it
  was given, so the weights load and none of that class's code runs.
- `load_plain_pickle`: a plain pickle stream (not a torch zip file), e.g. the `.metadata` of a
  `torch.distributed.checkpoint` folder; `load_dcp_metadata` and `SafeFileSystemReader` read such
  folders with the metadata's allow-list.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta


class UnsafeFileError(ValueError):
    """A file asked to unpickle something outside the allow-list (or is not a readable pickle)."""


class Opaque:
    """Inert stand-in for a foreign class: keeps the constructor args and state, runs nothing.

    `name` is the `module.qualname` the pickle referred to (set on each generated subclass).
    """

    name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        inst = super().__new__(cls)
        inst.args = args
        inst.state = None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Opaque({self.name})"


def _opaque_class(name: str) -> type[Opaque]:
    return type(f"Opaque[{name}]", (Opaque,), {"name": name})


def load_torch_file(
    path: str | Path,
    allowed: Iterable[Any] = (),
    opaque: Iterable[str] = (),
    mmap: bool = False,
) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, plus `allowed` globals (objects, or
    `(object, "module.qualname")` pairs as `torch.serialization.safe_globals` takes them) and
    `opaque` names (`"module.qualname"`) rebuilt as `Opaque` records.

    Raises FileNotFoundError when `path` is not a file and `UnsafeFileError` (naming the file) when
    the file needs a global outside the allow-list or is not a torch file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    extra = list(allowed) + [(_opaque_class(name), name) for name in opaque]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeFileError(f"{path}: refused to load: {first}") from None
    except (RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeFileError(f"{path}: not a readable torch file ({first})") from None


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, allowed: dict[str, Any], source: Path) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full not in self._allowed:
            raise UnsafeFileError(f"{self._source}: refused to unpickle global {full!r} (not in the allow-list)")
        return self._allowed[full]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self._source}: refused to unpickle a persistent id (not a plain pickle)")


def load_plain_pickle(path: str | Path, allowed: Iterable[Any]) -> Any:
    """Unpickle a plain pickle file allowing only the given globals (objects whose
    `module.qualname` may appear in the file, or `(object, "module.qualname")` pairs for objects
    without one, e.g. `(torch.float32, "torch.float32")`). Anything else raises `UnsafeFileError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    table = dict(
        (entry[1], entry[0]) if isinstance(entry, tuple) else (f"{entry.__module__}.{entry.__qualname__}", entry)
        for entry in allowed
    )
    with open(path, "rb") as f:
        try:
            return _AllowListUnpickler(f, table, path).load()
        except UnsafeFileError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as e:
            raise UnsafeFileError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _dcp_metadata_globals() -> list[Any]:
    """What the `.metadata` pickle of a `torch.distributed.checkpoint` folder written by the
    filesystem writer refers to: the metadata records, tensor properties (dtypes, layouts, memory
    formats, sizes) and the checkpoint's path. None of them runs code beyond building a record."""
    dtypes = [(d, f"torch.{name}") for name, d in vars(torch).items() if isinstance(d, torch.dtype)]
    return [
        Metadata,
        dcp_metadata.TensorStorageMetadata,
        dcp_metadata.BytesStorageMetadata,
        dcp_metadata.ChunkStorageMetadata,
        dcp_metadata.TensorProperties,
        dcp_metadata.MetadataIndex,
        StorageMeta,
        dcp_metadata._MEM_FORMAT_ENCODING,
        dcp_filesystem._StorageInfo,
        torch.Size,
        torch.serialization._get_layout,
        Path,
        type(Path()),
        *dtypes,
    ]


def load_dcp_metadata(folder: str | Path, name: str = ".metadata") -> Metadata:
    """The `Metadata` of a sharded checkpoint folder (`torch.distributed.checkpoint`; `name` is its
    `.metadata` file or a per-rank `__<rank>.metadata`), read with the allow-list above: a planted
    file that names anything else is refused, unrun."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a sharded checkpoint folder (no {name})")
    metadata = load_plain_pickle(path, _dcp_metadata_globals())
    if not isinstance(metadata, Metadata):
        raise UnsafeFileError(f"{path}: holds a {type(metadata).__name__}, not a checkpoint's Metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """A `torch.distributed.checkpoint` reader for a sharded checkpoint folder whose metadata goes
    through `load_dcp_metadata` (the tensor and byte entries it then reads are loaded by torch with
    weights_only). Use it wherever a folder from outside is loaded: `dcp.load(..., storage_reader=)`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = load_dcp_metadata(self.path, Path(self._get_metadata_path(kwargs.get("rank"))).name)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
