"""Every benchmark refuses a bad flag in one line that names the value and what is accepted."""
import sys

import pytest

from benchmarks import bench_data, bench_explain, bench_gradcam, bench_methods, bench_train


@pytest.mark.parametrize("module, args, message", [
    (bench_gradcam, ["--dtypes", "float32"], r"--dtypes 'float32': 'float32' is not accepted; expected a comma list of "
                                             r"fp32, bf16"),
    (bench_gradcam, ["--batches", "16,x"], r"--batches '16,x': expected positive integers"),
    (bench_gradcam, ["--reps", "0"], r"--reps 0: must be > 0"),
    (bench_explain, ["--batches", "0"], r"--batches '0': expected positive integers"),
    (bench_explain, ["--size", "16"], r"--size 16 must be >= 32"),
    (bench_train, ["--batches", "8,-1"], r"--batches '8,-1': expected positive integers"),
    (bench_train, ["--threads", "0"], r"--threads 0: must be > 0"),
    (bench_data, ["--images", "0"], r"--images 0: must be > 0"),
    (bench_data, ["--workers", "-1"], r"--workers -1 must be >= 0"),
    (bench_train, ["--size", "8"], r"--size 8 must be >= 32"),
])
def test_bad_flags_are_one_line_errors(module, args, message):
    with pytest.raises(SystemExit, match=r"^error: " + message):
        module.main([*args, "--device", "cpu"])


def test_bench_methods_names_the_extra_it_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # not installed
    with pytest.raises(SystemExit, match=r"^error: bench_methods needs threadpoolctl, in the bench extra: pip install "
                                         r"-e '\.\[bench\]'"):
        bench_methods.main(["--device", "cpu", "--methods", "gradcam", "--batches", "1", "--width", "0.05"])
