"""sportsnet.results: every result file has the schema's keys, written atomically and read back through one reader
that names a file that is not a result."""
import json

import pytest
import torch

from sportsnet import results


def test_a_result_is_written_with_its_wall_time_and_read_back(results_dir):
    env = results.environment(torch.device("cpu"))
    assert set(results.ENVIRONMENT_KEYS) <= set(env)
    stem = results.result_stem("demo", torch.device("cpu"), env)
    assert stem == f"demo_cpu_{results.host_class(env)}"
    path = results.write_result(stem, {"benchmark": "demo", "environment": env, "rows": [1]})
    assert path == results_dir / f"{stem}.json" == results.result_path(stem)
    payload = results.read_result(stem)
    assert payload["rows"] == [1] and payload["wall_s"] >= 0 and set(results.REQUIRED_KEYS) <= set(payload)
    assert results.read_result(path) == payload  # by path too
    assert results.write_result("given", {"benchmark": "x", "environment": env}, wall_s=12.5,
                                folder=results_dir / "elsewhere") == results_dir / "elsewhere" / "given.json"
    assert results.read_result("given", folder=results_dir / "elsewhere")["wall_s"] == 12.5


def test_the_folder_is_set_for_a_block_only(tmp_path):
    default = results.results_dir()
    with results.use_results_dir(tmp_path / "a") as folder:
        assert results.results_dir() == folder == tmp_path / "a"
    assert results.results_dir() == default


def test_files_outside_the_schema_are_refused_by_name(results_dir):
    with pytest.raises(ValueError, match="result 'bad' has no environment"):
        results.write_result("bad", {"benchmark": "x"})
    with pytest.raises(FileNotFoundError, match=r"no result file .*missing\.json"):
        results.read_result("missing")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "old.json").write_text(json.dumps({"benchmark": "x", "environment": {"device": "cpu"}}))
    with pytest.raises(results.ResultFileError, match=r"old\.json is not a result file: no wall_s, "
                                                      r"environment\.device_type"):
        results.read_result("old")
    (results_dir / "text.json").write_text("not json")
    with pytest.raises(results.ResultFileError, match=r"text\.json is not a result file: not JSON"):
        results.read_result("text")


def test_every_committed_result_file_has_the_schema():
    files = sorted(results.results_dir().glob("*.json"))
    assert files and all(results.read_result(p)["benchmark"] for p in files)
