"""Every program's every flag, given a bad value, is refused before any work: a non-zero exit, one line that
names the flag and what it accepts, and no run folder. The cases are generated from the configs' own
declarations (``bounds=``, ``applies=``, the field types), so a new flag is walked without a new test."""
import dataclasses

import pytest

from sportsnet.apps import (
    compare_backbones,
    explain,
    finetune_clip,
    make_synthetic,
    pretrain_clip,
    train,
    train_vgg19,
    zero_shot_clip,
)
from sportsnet.apps.config import ANY, flag_name

# program -> (main, config class, the flags that make a command line valid but for the one under test).
# "{tmp}" is the test's folder, "{data}" a folder with empty train/ valid/ test/ (a dataset folder as far as
# the flags go, and not the synthetic set).
PROGRAMS = {
    "train_vgg19": (train_vgg19.main, train_vgg19.TrainConfig, []),
    "train": (train.main, train.BackboneConfig, []),
    "explain": (explain.main, explain.ExplainConfig, ["--checkpoint", "{tmp}/no-run"]),
    "zero_shot_clip": (zero_shot_clip.main, zero_shot_clip.ZeroShotConfig, []),
    "finetune_clip": (finetune_clip.main, finetune_clip.FinetuneConfig, []),
    "pretrain_clip": (pretrain_clip.main, pretrain_clip.PretrainConfig, []),
    "compare_backbones": (compare_backbones.main, compare_backbones.CompareConfig, []),
}


def _bad_values(field: dataclasses.Field) -> list[str]:
    """Values just outside the field's bounds, and one its type does not parse."""
    bounds, kind = field.metadata.get("bounds"), type(field.default)
    values = []
    if bounds is not None:
        step = 1 if kind is int else 0.5
        if bounds.low is not None:
            values.append(bounds.low if bounds.low_open else bounds.low - step)
        if bounds.high is not None:
            values.append(bounds.high if bounds.high_open else bounds.high + step)
        values = [str(kind(v)) for v in values]
    if kind in (int, float):
        values.append("1.5x")
    return values


def _cases():
    for program, (_, cls, _) in PROGRAMS.items():
        for f in dataclasses.fields(cls):
            for value in _bad_values(f):
                yield pytest.param(program, [flag_name(f.name), value], flag_name(f.name),
                                   id=f"{program}{flag_name(f.name)}={value}")
            applies = f.metadata.get("applies")
            if applies is None:
                continue
            key, values = applies
            key_field = next(k for k in dataclasses.fields(cls) if k.name == key)
            if values == ANY or isinstance(key_field.default, bool):
                context = []  # the condition's flag left out: unset / off
            elif key == "data":
                context = ["--data", "{data}"]
            else:
                context = [flag_name(key), next(c for c in key_field.metadata["choices"] if c not in values)]
            if key != "data":
                context += ["--data", "synthetic"]
            value = str(f.default) if not isinstance(f.default, bool) else None
            given = [flag_name(f.name)] if value is None else [flag_name(f.name), value]
            yield pytest.param(program, [*context, *given], flag_name(f.name), id=f"{program}{flag_name(f.name)}-n/a")


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    for split in ("train", "valid", "test"):
        (root / split).mkdir()
    return root


@pytest.mark.parametrize("program, args, flag", list(_cases()))
def test_a_bad_flag_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, data_folder, program, args, flag):
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here, and is seen
    main, _, base = PROGRAMS[program]
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{data}", str(data_folder))
            for a in [*base, *args, "--out", str(tmp_path / "out")]]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    code = stop.value.code
    out = capsys.readouterr()
    message = code if isinstance(code, str) else out.err.strip()
    assert code not in (0, None), message
    assert len(message.splitlines()) == 1 and not out.out.strip(), (message, out.out)
    assert flag in message and any(w in message for w in ("must be", "invalid", "no effect")), message
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"


@pytest.mark.parametrize("argv, message", [
    (["--size", "8"], "--size 8 must be an integer >= 32"),
    (["--num-classes", "101"], "--num-classes 101 must be an integer in [2, 100]"),
    (["--train-per-class", "x"], "argument --train-per-class: invalid int value: 'x'"),
])
def test_make_synthetic_names_the_flag(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        make_synthetic.main(["--root", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_the_misuses_a_new_user_met(tmp_path, monkeypatch, capsys):
    """The issue's own examples, spelled out."""
    monkeypatch.chdir(tmp_path)
    for main, argv, message in [
        (train_vgg19.main, ["--epochs", "2"], "--epochs has no effect with --recipe reduce256-two-phase (it applies "
                                              "with --recipe frozen-bn-head); with --recipe reduce256-two-phase use "
                                              "--phase1-epochs, --phase2-epochs, --phase2-lr-factor"),
        (train_vgg19.main, ["--epochs", "-3", "--recipe", "frozen-bn-head"], "--epochs -3: must be >= 1"),
        (train_vgg19.main, ["--lr", "-0.1"], "--lr -0.1: must be > 0"),
        (train_vgg19.main, ["--data", "/nonexistent/sports"], "--data /nonexistent/sports: no such dataset folder"),
        (explain.main, ["--checkpoint", "/nonexistent/run", "--data", "synthetic"],
         "--checkpoint /nonexistent/run: no such run folder or checkpoint file"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert message in str(stop.value.code) and "\n" not in str(stop.value.code)
        assert not capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_numeric_flag_declares_what_it_accepts():
    """The walk above covers only declared bounds: a numeric flag without them would escape it. A seed is the
    one number any value of which is fine."""
    undeclared = [f"{program}{flag_name(f.name)}" for program, (_, cls, _) in PROGRAMS.items()
                  for f in dataclasses.fields(cls)
                  if type(f.default) in (int, float) and f.metadata.get("bounds") is None and f.name != "seed"]
    assert undeclared == []
