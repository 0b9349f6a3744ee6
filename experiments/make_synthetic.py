"""Write the offline synthetic sports set (the 100-Sports layout) and print what was written.

The program lives in the package: sportsnet/apps/make_synthetic.py (also `python -m sportsnet.apps.make_synthetic`);
`python experiments/make_synthetic.py --help` lists its flags.
"""
from sportsnet.apps.make_synthetic import main

if __name__ == "__main__":
    main()
