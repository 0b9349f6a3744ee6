"""Data-pipeline speed: runs sportsnet/apps/bench/data.py (flags: --help)."""
from sportsnet.apps.bench.data import main

if __name__ == "__main__":
    main()
