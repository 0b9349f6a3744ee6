"""Few-shot CLIP: accuracy after training on only k images per class, method by method.

The program lives in the package: sportsnet/apps/finetune_clip.py (also `python -m sportsnet.apps.finetune_clip`);
`python experiments/finetune_clip.py --help` lists its flags.
"""
from sportsnet.apps.finetune_clip import main

if __name__ == "__main__":
    main()
