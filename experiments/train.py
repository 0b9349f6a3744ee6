"""Train any torchvision or timm classifier (--arch) on 100-Sports (or the offline synthetic set) with a transfer
recipe, and write a test report.

The program lives in the package: sportsnet/apps/train.py (also `python -m sportsnet.apps.train`);
`python experiments/train.py --help` lists its flags.
"""
from sportsnet.apps.train import main

if __name__ == "__main__":
    main()
