"""The fused Grad-CAM operator vs its reference: runs sportsnet/apps/bench/gradcam.py (flags: --help)."""
from sportsnet.apps.bench.gradcam import main

if __name__ == "__main__":
    main()
