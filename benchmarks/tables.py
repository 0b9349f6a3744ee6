"""README tables from benchmarks/results/*.json: runs sportsnet/apps/bench/tables.py (--update / --check FILE...)."""
from sportsnet.apps.bench.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
