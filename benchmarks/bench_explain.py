"""End-to-end explanation throughput: runs sportsnet/apps/bench/explain.py (flags: --help)."""
from sportsnet.apps.bench.explain import main

if __name__ == "__main__":
    main()
