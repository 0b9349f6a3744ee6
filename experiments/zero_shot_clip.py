"""Zero-shot sports classification with CLIP, and a prompt-set ablation.

The program lives in the package: sportsnet/apps/zero_shot_clip.py (also `python -m sportsnet.apps.zero_shot_clip`);
`python experiments/zero_shot_clip.py --help` lists its flags.
"""
from sportsnet.apps.zero_shot_clip import main

if __name__ == "__main__":
    main()
