"""Train the seeds' VGG19 on 100-Sports (or the offline synthetic set) and write a test report.

The program lives in the package: sportsnet/apps/train_vgg19.py (also `python -m sportsnet.apps.train_vgg19`);
`python experiments/train_vgg19.py --help` lists its flags.
"""
from sportsnet.apps.train_vgg19 import main

if __name__ == "__main__":
    main()
