"""benchmarks.tables: the READMEs' numbers are the committed JSON's; --update rewrites only marked text."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import tables
from sportsnet import results
from tests.support import ROOT

ENVIRONMENT = {"device": "cpu", "device_type": "cpu", "hardware": {}, "torch": "2.x", "cuda": None,
               "python": "3.x", "time": "2026-12-01 00:00:00"}


@pytest.mark.parametrize("page", tables.PAGES)
def test_committed_pages_match_the_committed_results(page):
    """Fails when a result file changed and its page was not re-rendered (or a number was edited by hand)."""
    path = ROOT / page
    assert "<!-- results: " in path.read_text(), f"{page} shows no rendered results"
    assert tables.sync(path, check=True) == [], f"{page} is stale: run python -m benchmarks.tables --update {page}"


def test_results_are_the_repositorys_benchmarks_results():
    """The library finds the committed result files wherever it is run from (it is installed editable)."""
    assert results.results_dir() == ROOT / "benchmarks" / "results" and tables.ROOT == ROOT


def _result(folder: Path, stem: str, payload: dict) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps({"environment": ENVIRONMENT, **payload}))


def _train(gain: float, wall_s: float = 10.0) -> dict:
    return {"benchmark": "train_step", "wall_s": wall_s,
            "best": {"batch": 16, "variant": "bf16 channels-last eager", "images_per_s": 100.0,
                     "gain_vs_fp32_nchw_eager": gain}}


def test_update_rewrites_marked_text_only(tmp_path, results_dir):
    _result(results_dir, "train_cpu", _train(2.04))
    page = tmp_path / "page.md"
    before = ("Intro 9.9x stays.\nStep is <!-- results: train_cpu.best_gain -->9.9x"
              "<!-- /results: train_cpu.best_gain --> faster.\n\nOutro 9.9x.\n")
    page.write_text(before)
    assert tables.sync(page, check=True) == ["train_cpu.best_gain"]
    assert page.read_text() == before  # check does not write
    assert tables.sync(page) == ["train_cpu.best_gain"]
    after = page.read_text()
    assert after == before.replace("-->9.9x<!--", "-->2.0x<!--")
    assert tables.sync(page, check=True) == []  # now in sync
    assert tables.main(["--check", str(page)]) == 0
    _result(results_dir, "train_cpu", _train(3.0))
    assert tables.main(["--check", str(page)]) == 1


def test_make_bench_total_against_the_target(results_dir):
    for bench in tables.MAKE_BENCH:
        _result(results_dir, f"{bench}_cpu_avx2", {"benchmark": "x", "wall_s": 100.0})
    line = tables.render("make_bench_cpu_avx2")
    assert "6 min 40 s" in line and "**met**" in line and "data 100 s" in line
    _result(results_dir, "data_cpu_avx2", {"benchmark": "x", "wall_s": 700.0})
    line = tables.render("make_bench_cpu_avx2")
    assert "16 min 40 s" in line and "**not met**" in line
    _result(results_dir, "data_cpu_avx2", {"benchmark": "x"})
    with pytest.raises(SystemExit, match=r"data_cpu_avx2\.json is not a result file: no wall_s"):
        tables.render("make_bench_cpu_avx2")
    with pytest.raises(SystemExit, match=r"no result file .*gradcam_cpu_avx512_bf16\.json"):  # another host class
        tables.render("make_bench_cpu_avx512_bf16")


def test_unknown_names_are_refused_clearly(results_dir):
    with pytest.raises(SystemExit, match=r"no result file .*train_cpu\.json"):
        tables.render("train_cpu")
    _result(results_dir, "train_cpu", _train(2.0))
    with pytest.raises(SystemExit, match="unknown value 'speed' in 'train_cpu.speed'"):
        tables.render("train_cpu.speed")


def test_markers_in_backticks_are_prose_and_unpaired_markers_are_refused(tmp_path, results_dir):
    _result(results_dir, "train_cpu", _train(2.0))
    page = tmp_path / "page.md"
    example = "Add `<!-- results: train_cpu.best_gain -->` for a number.\n\n"
    block = "Gain <!-- results: train_cpu.best_gain -->9x<!-- /results: train_cpu.best_gain -->.\n"
    page.write_text(example + "Text that must stay.\n" + block)
    assert tables.sync(page) == ["train_cpu.best_gain"]
    assert page.read_text() == example + "Text that must stay.\n" + block.replace("9x", "2.0x")
    page.write_text("<!-- results: train_cpu.best_gain -->9x\n")  # never closed
    with pytest.raises(SystemExit, match="do not pair up .1 openers, 0 closers, 0 blocks"):
        tables.sync(page, check=True)
    page.write_text("<!-- results: train_cpu -->\n<!-- results: train_cpu.best_gain -->x<!-- /results: "
                    "train_cpu.best_gain -->\n<!-- /results: train_cpu -->\n")
    with pytest.raises(SystemExit, match="one spans another: train_cpu"):
        tables.sync(page, check=True)


def test_minutes_never_shows_60_seconds():
    assert tables.minutes(119.7) == "2 min 0 s" and tables.minutes(61.2) == "1 min 1 s"


def test_the_tables_need_no_test_or_bench_extra():
    """Rendering imports every benchmark module: none may import a package of an extra (threadpoolctl, the peers)
    at import time, so the tables run with the library's dependencies alone; run as ``python -m benchmarks.tables``
    from the repository root, as documented."""
    code = ("import runpy, sys; sys.modules.update(threadpoolctl=None, pytorch_grad_cam=None, torchcam=None); "
            "sys.argv = ['tables', '--check']; runpy.run_module('benchmarks.tables', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
