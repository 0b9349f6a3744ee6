"""The repository's tooling, apart from the installed ``sportsnet`` package: run from the repository root with
``python -m tools.<name>`` (``gpu_check``: the GPU acceptance run). Nothing in ``sportsnet/`` imports it."""
