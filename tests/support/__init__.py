"""What tests share: tiny CLIP architectures (clip_tiny), hostile image trees (trees), and the repository's paths."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
BENCHMARKS = ROOT / "benchmarks"
