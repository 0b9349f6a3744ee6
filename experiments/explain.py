"""Explain a classifier's predictions: overlays, a predictions CSV, and faithfulness metrics.

The program lives in the package: sportsnet/apps/explain.py (also `python -m sportsnet.apps.explain`);
`python experiments/explain.py --help` lists its flags.
"""
from sportsnet.apps.explain import main

if __name__ == "__main__":
    main()
