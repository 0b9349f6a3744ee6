"""benchmarks.bench_data end to end on a tiny set: every path delivers ready batches, the JSON renders."""
from benchmarks import bench_data
from sportsnet.results import read_result, use_results_dir


def test_the_four_paths_run_and_the_table_renders(tmp_path):
    with use_results_dir(tmp_path / "results"):
        bench_data.main(["--classes", "3", "--per-class", "12", "--size", "40", "--images", "32", "--batch-size", "8",
                         "--reps", "2", "--workers", "1", "--device", "cpu", "--root", str(tmp_path / "set"),
                         "--cache-dir", str(tmp_path / "cache")])
    [path] = (tmp_path / "results").glob("data_cpu_*.json")  # named by the host class, e.g. data_cpu_avx2.json
    payload = read_result(path)  # the schema every result file has
    cpu = payload["environment"]["hardware"]["cpu"]  # every result says which hardware made it
    assert path.stem == f"data_cpu_{cpu['isa'].lower()}{'_bf16' if cpu['native_bf16'] else ''}"
    results = payload["results"]
    assert list(results) == ["plain", "decode_jpeg+batched", "cache+per-image", "cache+batched"]
    assert all(r["images_per_s"] > 0 and r["reps"] == 2 for r in results.values())
    assert results["plain"]["vs_plain"] == 1.0 and results["cache+batched"]["workers"] == 0
    assert payload["config"]["train_images"] == 36 and payload["config"]["images_timed_per_rep"] == 32
    assert payload["target"]["measured"] == results["cache+batched"]["vs_plain"]
    assert payload["wall_s"] > 0  # its run time, which make bench's time budget adds up
    table = bench_data.data_table(payload)
    assert "| cache+batched " in table and "Target (cache+batched >= 3x plain)" in table
    assert f"{cpu['isa']}, native bf16 {'yes' if cpu['native_bf16'] else 'no'}" in table
