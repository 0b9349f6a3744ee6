"""Train VGG19 and other torchvision/timm backbones on the offline synthetic set at the demo's budget, explain each,
and write one table (test accuracy, speed, pointing game, parameters).

The program lives in the package: sportsnet/apps/compare_backbones.py (also
`python -m sportsnet.apps.compare_backbones`); `python experiments/compare_backbones.py --help` lists its flags.
"""
from sportsnet.apps.compare_backbones import main

if __name__ == "__main__":
    main()
