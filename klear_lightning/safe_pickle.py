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
  `torch.distributed.checkpoint` folder.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


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
    `module.qualname` may appear in the file). Anything else raises `UnsafeFileError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    table = {f"{obj.__module__}.{obj.__qualname__}": obj for obj in allowed}
    with open(path, "rb") as f:
        try:
            return _AllowListUnpickler(f, table, path).load()
        except UnsafeFileError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as e:
            raise UnsafeFileError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
