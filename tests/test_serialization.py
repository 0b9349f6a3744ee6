"""sportsnet.serialization: the one weights-only loader, atomic saves, and mismatch descriptions."""
import ast
import errno
import json
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import sportsnet
from sportsnet import serialization
from sportsnet.serialization import (
    CheckpointWriteError,
    NotATorchFileError,
    UnsafeFileError,
    WeightsFileError,
    atomic_path,
    describe_mismatch,
    find_mismatch,
    load_checkpoint,
    save_checkpoint,
    write_json,
)
from tests.support.trees import write_malicious_pickle

PACKAGE = Path(sportsnet.__file__).parent


def test_a_saved_checkpoint_loads_back(tmp_path):
    state = {"epoch": 3, "model": {"w": torch.arange(4.0)}, "classes": ["a", "b"]}
    assert save_checkpoint(tmp_path / "sub" / "c.pt", state) == tmp_path / "sub" / "c.pt"
    loaded = load_checkpoint(tmp_path / "sub" / "c.pt")
    assert loaded["epoch"] == 3 and loaded["classes"] == ["a", "b"]
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    legacy = tmp_path / "legacy.pt"  # torch's pre-1.6 format: a pickle stream, not a zip archive
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy)["w"], torch.ones(2))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint '.*nope\.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"weights file '.*' is not a file"):
        load_checkpoint(tmp_path, what="weights file")


@pytest.mark.parametrize("pickled", [False, True])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, pickled):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    if pickled:
        write_malicious_pickle(evil, "model", marker)
    else:  # the same object inside torch's zip format
        from tests.support.trees import _OpensAFile

        torch.save({"model": _OpensAFile(str(marker))}, evil)
    with pytest.raises(UnsafeFileError, match=r"refusing to load '.*evil\.pt': .*weights_only=True "
                                              r"\(UnpicklingError: Weights only load failed\. Unsupported global"):
        load_checkpoint(evil)
    assert not marker.exists()
    # One error, catchable as what each caller expected before: a RuntimeError, or torch's UnpicklingError.
    assert issubclass(UnsafeFileError, RuntimeError) and issubclass(UnsafeFileError, pickle.UnpicklingError)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*TorchScript archive:UserWarning")
def test_a_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeFileError, match=r"refusing to load .*TorchScript"):
        load_checkpoint(path)


def test_files_that_are_not_torch_files_say_so(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(NotATorchFileError, match=r"checkpoint '.*empty\.pt' is empty \(0 bytes\), not a torch file"):
        load_checkpoint(empty)
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3, loss 0.1\n")
    with pytest.raises(NotATorchFileError, match=r"is not a torch file: it starts with b'epoch 3,', expected a zip"):
        load_checkpoint(text)
    safetensors = tmp_path / "w.pt"
    safetensors.write_bytes((16).to_bytes(8, "little") + b'{"a": 1}        ')
    with pytest.raises(NotATorchFileError, match="looks like a safetensors file"):
        load_checkpoint(safetensors)


def test_truncated_files_and_foreign_zips_are_not_readable_torch_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    data = good.read_bytes()
    for name, cut in (("zip.pt", data[: len(data) // 2]), ("pickle.pt", pickle.dumps({"w": [1.0] * 50}, 2)[:40])):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(NotATorchFileError, match=rf"checkpoint '.*{name}' is not a readable torch file: damaged, "
                                                     r"truncated or of another format \(\w+"):
            load_checkpoint(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as z:
        z.writestr("notes.txt", "not tensors")
    with pytest.raises(NotATorchFileError, match="is not a readable torch file"):
        load_checkpoint(tmp_path / "notes.zip")
    assert issubclass(NotATorchFileError, WeightsFileError) and not issubclass(NotATorchFileError, UnsafeFileError)


def test_save_is_atomic_when_the_disk_fills(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    with pytest.raises(TypeError, match="the path comes first"):
        save_checkpoint({"epoch": 0}, path)
    save_checkpoint(path, {"epoch": 1})

    def full_disk(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="disk is full; the previous last.pt is intact") as info:
        save_checkpoint(path, {"epoch": 2})
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    with pytest.raises(CheckpointWriteError, match="no previous checkpoint existed"):
        save_checkpoint(tmp_path / "first.pt", {"epoch": 1})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind


def test_save_replaces_the_file_only_once_it_is_complete(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    seen = []
    real_replace = serialization.os.replace

    def replace(src, dst):  # at the moment of the rename, the target still holds the old checkpoint
        seen.append((load_checkpoint(dst)["epoch"], load_checkpoint(src)["epoch"]))
        real_replace(src, dst)

    monkeypatch.setattr(serialization.os, "replace", replace)
    save_checkpoint(path, {"epoch": 2})
    assert seen == [(1, 2)] and load_checkpoint(path)["epoch"] == 2


def test_atomic_path_replaces_files_and_folders_whole_or_not_at_all(tmp_path):
    target = write_json(tmp_path / "r.json", {"a": Path("x")})
    assert json.loads(target.read_text()) == {"a": "x"}
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_path(target) as tmp:
            tmp.write_text("{ half")
            raise RuntimeError("half-way")
    assert json.loads(target.read_text()) == {"a": "x"}
    tree = tmp_path / "tree"
    for content in ("old", "new"):  # a folder replaces an existing one
        with atomic_path(tree) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_text(content)
    assert (tree / "f.txt").read_text() == "new"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tree) as tmp:
            tmp.mkdir()
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "tree"]  # no temporary, no old copy
    assert (tree / "f.txt").read_text() == "new"


def test_mismatches_are_described_by_kind_with_a_limit():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = dict(model.state_dict())
    assert describe_mismatch(model, state) == "no differences"
    state["1.weight"] = torch.zeros(5, 4)
    del state["1.bias"]
    state.update({f"extra.{i}": torch.zeros(1) for i in range(7)})
    text = describe_mismatch(model, state, limit=2)
    assert text == ("1 shape mismatches: ['1.weight: checkpoint (5, 4) vs model (2, 4)']; "
                    "1 missing from the checkpoint: ['1.bias']; "
                    "7 not in the model: ['extra.0', 'extra.1'] (+5 more)")
    assert describe_mismatch(model.state_dict(), state, limit=2) == text  # a state dict works as the model side
    only_first = find_mismatch(model, state, prefix="0.", saved="file")
    assert not only_first and only_first.describe() == "no differences"
    optional = find_mismatch(model, state, optional=lambda k: k.endswith("bias"), saved="file")
    assert optional.missing == [] and optional.shapes == ["1.weight: file (5, 4) vs model (2, 4)"]
    assert "(int, not a tensor)" in describe_mismatch(model, {**model.state_dict(), "0.bias": 3})


def test_the_base_layer_imports_only_torch_and_the_standard_library():
    tree = ast.parse((PACKAGE / "serialization.py").read_text())
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert roots <= set(sys.stdlib_module_names) | {"__future__", "torch"}, roots


def test_no_model_module_imports_the_engine():
    """models is the layer below engine: an import the other way would be a cycle in waiting."""
    offenders = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        package = ["sportsnet", *path.relative_to(PACKAGE).parent.parts]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, [base, node.module]))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names
                          if n == "sportsnet.engine" or n.startswith("sportsnet.engine.")]
    assert offenders == []


def test_the_engine_names_are_the_serialization_ones():
    from sportsnet.engine import checkpoint

    for name in ("load_checkpoint", "save_checkpoint", "describe_mismatch", "CheckpointWriteError"):
        assert getattr(checkpoint, name) is getattr(serialization, name)
        assert getattr(sportsnet.engine, name) is getattr(serialization, name)
