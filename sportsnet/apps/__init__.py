"""The applications: what ``experiments/*.py`` and ``benchmarks/*.py`` run (those files are thin entry points).

The only layer that parses flags, prints, and writes run folders and result files; the library below
(data, models, engine, cam, ops) never does. Each module has a ``main(argv=None)`` and runs as
``python -m sportsnet.apps.<name>`` as well as through its script.
"""
