"""The benchmarks (``benchmarks/bench_*.py`` and ``benchmarks/tables.py`` are their entry points).

``common``: environment, interleaved timing, copy bandwidth and result JSON under ``benchmarks/results``;
``gradcam``, ``explain``, ``train``, ``data``: one benchmark each, with its README table; ``tables``: those
tables rendered into the marked blocks of the READMEs. Each runs as ``python -m sportsnet.apps.bench.<name>``.
"""
