"""The benchmarks, a package of the repository (not of the installed ``sportsnet``): run each from the repository
root as ``python -m benchmarks.<name>``.

``bench_gradcam``, ``bench_explain``, ``bench_train``, ``bench_data``, ``bench_methods``: one benchmark each, with
its table; ``common``: device and list flags, interleaved timing, copy bandwidth; ``baseline``: an earlier
revision's CPU operator built beside the current one; ``tables``: every result file's table rendered into the
marked blocks of the pages. Result files are written and read through :mod:`sportsnet.results`.
"""
