"""Contrastive image-text training of a CLIP model on captions (Flickr8k or the synthetic captions).

The program lives in the package: sportsnet/apps/pretrain_clip.py (also `python -m sportsnet.apps.pretrain_clip`);
`python experiments/pretrain_clip.py --help` lists its flags.
"""
from sportsnet.apps.pretrain_clip import main

if __name__ == "__main__":
    main()
