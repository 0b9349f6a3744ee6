import sys
from pathlib import Path

# The experiment scripts are thin wrappers; tests import them (e.g. `import train_vgg19`) to run main().
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
