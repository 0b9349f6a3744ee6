"""benchmarks/bench_data.py end to end on a tiny set: every path delivers ready batches, the JSON renders."""
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _common  # noqa: E402
import bench_data  # noqa: E402


def test_the_four_paths_run_and_the_table_renders(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    bench_data.main(["--classes", "3", "--per-class", "12", "--size", "40", "--images", "32", "--batch-size", "8",
                     "--reps", "2", "--workers", "1", "--device", "cpu", "--root", str(tmp_path / "set"),
                     "--cache-dir", str(tmp_path / "cache")])
    payload = json.loads((tmp_path / "results" / "data_cpu.json").read_text())
    results = payload["results"]
    assert list(results) == ["plain", "decode_jpeg+batched", "cache+per-image", "cache+batched"]
    assert all(r["images_per_s"] > 0 and r["reps"] == 2 for r in results.values())
    assert results["plain"]["vs_plain"] == 1.0 and results["cache+batched"]["workers"] == 0
    assert payload["config"]["train_images"] == 36 and payload["config"]["images_timed_per_rep"] == 32
    assert payload["target"]["measured"] == results["cache+batched"]["vs_plain"]
    assert payload["wall_s"] > 0  # its run time, which make bench's time budget adds up
    table = bench_data.data_table(payload)
    assert "| cache+batched " in table and "Target (cache+batched >= 3x plain)" in table
