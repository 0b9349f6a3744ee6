"""make_synthetic: a preset's set with flags overriding it, the same set the programs then reuse."""
import pytest

from sportsnet.apps import make_synthetic
from sportsnet.data import SYNTHETIC_SETS, Sports100, synthetic_set


def test_flags_override_the_preset_and_a_program_reuses_the_set(tmp_path, capsys):
    root = tmp_path / "syn"
    make_synthetic.main(["--preset", "clip-demo", "--root", str(root), "--num-classes", "3", "--train-per-class", "4",
                         "--eval-per-class", "2", "--size", "40"])
    assert "3 classes, 40px, {'train': 12, 'valid': 6, 'test': 6, 'offcentre': 6}" in capsys.readouterr().out
    first = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    assert len(Sports100(root, "train").classes) == 3
    # The same arguments through the library: nothing is rewritten.
    synthetic_set("clip-demo", root=root, num_classes=3, train_per_class=4, eval_per_class=2, size=40)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == first


def test_presets_are_the_programs_defaults():
    from sportsnet.apps.clip_data import SYNTHETIC_CLIP, SYNTHETIC_DEFAULTS
    from sportsnet.apps.train_vgg19 import TrainConfig

    vgg = SYNTHETIC_SETS["vgg-demo"]
    cfg = TrainConfig()
    assert (cfg.synthetic_root, cfg.synthetic_classes, cfg.synthetic_train_per_class, cfg.synthetic_eval_per_class,
            cfg.synthetic_size) == (vgg["root"], vgg["num_classes"], vgg["train_per_class"], vgg["eval_per_class"],
                                    vgg["size"])
    assert {"root": SYNTHETIC_CLIP, **SYNTHETIC_DEFAULTS} == SYNTHETIC_SETS["clip-demo"]


def test_a_bad_value_is_a_one_line_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_synthetic.main(["--root", str(tmp_path / "x"), "--size", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: --size 8 must be an integer >= 32" in err[0]
