"""Files from outside are never unpickled beyond an allow-list (klear_lightning.safe_pickle)."""

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from klear_lightning.safe_pickle import Opaque, UnsafeFileError, load_plain_pickle, load_torch_file


class _Exploit:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Foreign:
    """A class an official checkpoint might embed; its code must never run when we read the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).touch()
        self.__dict__.update(state)


@dataclass
class Record:
    name: str
    size: int


def test_torch_file_with_weights_loads(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.arange(4.0)}, "step": 3}, path)
    out = load_torch_file(path)
    assert out["step"] == 3
    assert torch.equal(out["state_dict"]["w"], torch.arange(4.0))


def test_malicious_torch_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": _Exploit(marker)}, path)
    with pytest.raises(UnsafeFileError, match="evil.pt"):
        load_torch_file(path)
    assert not marker.exists()


def test_foreign_class_loads_as_inert_record_only_when_named(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "official.pt"
    torch.save({"model": {"w": torch.ones(3)}, "args": Foreign(marker)}, path)
    name = f"{Foreign.__module__}.{Foreign.__qualname__}"
    with pytest.raises(UnsafeFileError, match="official.pt"):
        load_torch_file(path)
    out = load_torch_file(path, opaque=[name])
    assert isinstance(out["args"], Opaque) and out["args"].name == name
    assert out["args"].state == {"marker": str(marker)}
    assert torch.equal(out["model"]["w"], torch.ones(3))
    assert not marker.exists()


def test_truncated_torch_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnsafeFileError, match="cut.pt: not a readable torch file"):
        load_torch_file(path)


def test_plain_pickle_allow_list(tmp_path):
    good, evil = tmp_path / "good.pkl", tmp_path / "evil.pkl"
    marker = tmp_path / "pwned"
    good.write_bytes(pickle.dumps({"a": Record("x", 2)}))
    evil.write_bytes(pickle.dumps({"a": _Exploit(marker)}))
    assert load_plain_pickle(good, [Record]) == {"a": Record("x", 2)}
    with pytest.raises(UnsafeFileError, match=r"evil.pkl: refused to unpickle global '(posix|os)\.system'"):
        load_plain_pickle(evil, [Record])
    with pytest.raises(UnsafeFileError, match="good.pkl: refused to unpickle global"):
        load_plain_pickle(good, [])
    assert not marker.exists()
