"""sportsnet.apps.bench.tables: the READMEs' numbers are the committed JSON's; --update rewrites only marked text."""
import json
from pathlib import Path

import pytest

from sportsnet.apps.bench import common, tables

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("page", tables.PAGES)
def test_committed_pages_match_the_committed_results(page):
    """Fails when a result file changed and its page was not re-rendered (or a number was edited by hand)."""
    path = ROOT / page
    assert "<!-- results: " in path.read_text(), f"{page} shows no rendered results"
    assert tables.sync(path, check=True) == [], f"{page} is stale: run python benchmarks/tables.py --update {page}"


def test_results_are_the_repositorys_benchmarks_results():
    """The package finds the committed result files wherever it is run from (it is installed editable)."""
    assert common.RESULTS == ROOT / "benchmarks" / "results"


def _result(results: Path, stem: str, payload: dict) -> None:
    results.mkdir(exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(payload))


def _train(gain: float, wall_s: float = 10.0) -> dict:
    return {"benchmark": "train_step", "wall_s": wall_s,
            "best": {"batch": 16, "variant": "bf16 channels-last eager", "images_per_s": 100.0,
                     "gain_vs_fp32_nchw_eager": gain}}


def test_update_rewrites_marked_text_only(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    _result(common.RESULTS, "train_cpu", _train(2.04))
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
    _result(common.RESULTS, "train_cpu", _train(3.0))
    assert tables.main(["--check", str(page)]) == 1


def test_make_bench_total_against_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    for bench in tables.MAKE_BENCH:
        _result(common.RESULTS, f"{bench}_cpu_avx2", {"benchmark": "x", "wall_s": 100.0})
    line = tables.render("make_bench_cpu_avx2")
    assert "6 min 40 s" in line and "**met**" in line and "data 100 s" in line
    _result(common.RESULTS, "data_cpu_avx2", {"benchmark": "x", "wall_s": 700.0})
    line = tables.render("make_bench_cpu_avx2")
    assert "16 min 40 s" in line and "**not met**" in line
    _result(common.RESULTS, "data_cpu_avx2", {"benchmark": "x"})
    with pytest.raises(SystemExit, match="data_cpu_avx2 record no wall_s"):
        tables.render("make_bench_cpu_avx2")
    with pytest.raises(SystemExit, match=r"no result file .*gradcam_cpu_avx512_bf16\.json"):  # another host class
        tables.render("make_bench_cpu_avx512_bf16")


def test_unknown_names_are_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    with pytest.raises(SystemExit, match=r"no result file .*train_cpu\.json"):
        tables.render("train_cpu")
    _result(common.RESULTS, "train_cpu", _train(2.0))
    with pytest.raises(SystemExit, match="unknown value 'speed' in 'train_cpu.speed'"):
        tables.render("train_cpu.speed")


def test_markers_in_backticks_are_prose_and_unpaired_markers_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    _result(common.RESULTS, "train_cpu", _train(2.0))
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
