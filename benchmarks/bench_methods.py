"""Every CAM method against pytorch-grad-cam and torchcam: runs sportsnet/apps/bench/methods.py (flags: --help)."""
from sportsnet.apps.bench.methods import main

if __name__ == "__main__":
    main()
