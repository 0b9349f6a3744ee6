import os
import sys
from pathlib import Path

# Tests never download anything: huggingface_hub reads this once, at import, so set it first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The experiment scripts are thin wrappers; tests import them (e.g. `import train_vgg19`) to run main().
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
