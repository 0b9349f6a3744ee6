"""Training-step speed of VGG19: runs sportsnet/apps/bench/train.py (flags: --help)."""
from sportsnet.apps.bench.train import main

if __name__ == "__main__":
    main()
