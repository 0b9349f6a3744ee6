"""The few-shot table: zero-shot and every few-shot method at 1/2/4/8/16 shots, with and without a validation
split, 3 seeds, with training seconds, written as a result file that ``python -m benchmarks.tables --update``
renders into docs/clip.md (``make fewshot-table`` does both).

    python -m benchmarks.fewshot                           # the offline CLIP demo's model and synthetic set
    python -m benchmarks.fewshot --data data/sports100 --model ViT-B-32 --pretrained openai   # 100-Sports

With no ``--data`` it is the offline CLIP demo (``make demo-clip``'s model, pre-trained here on the synthetic set's
training captions when it is missing, then reused) on that set's images; the result file is
``fewshot_clip_demo_<host class>.json``. With ``--data`` and weights, it is that dataset
(``fewshot_<dataset>_<device>.json``). Flags after ``--`` go to finetune_clip.py as they are (e.g.
``-- --lora-steps-per-shot 500``). The defaults here are finetune_clip.py's, except the training budgets, which
are cut to fit a CPU (``DEMO_BUDGET``); the table's caption states the ones used.
"""
from __future__ import annotations

import argparse

import torch

from sportsnet.apps import finetune_clip
from sportsnet.apps.zero_shot_clip import ZeroShotConfig, offline_demo_checkpoint
from sportsnet.models.clip import DEMO_ARCH
from sportsnet.results import environment, result_stem

#: finetune_clip.py flags of the offline demo's table: the paper-sized budgets of CLIP-LoRA (500 steps per shot)
#: and CoOp do not fit a CPU run; these do (the table says so).
DEMO_BUDGET = ["--steps", "300", "--coop-steps", "100", "--lora-steps-per-shot", "10", "--augment-views", "10"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="a 100-Sports folder (default: the offline demo's synthetic set)")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip architecture with --data (default: %(default)s)")
    ap.add_argument("--pretrained", default="openai", help="weights with --data (default: %(default)s)")
    ap.add_argument("--shots", default="1,2,4,8,16", help="default: %(default)s")
    ap.add_argument("--seeds", default="1,2,3", help="default: %(default)s")
    ap.add_argument("--runs", default="runs", help="run folders (default: %(default)s)")
    ap.add_argument("--device", default="auto", help="default: %(default)s")
    args, passthrough = ap.parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    common = ["--shots", args.shots, "--seeds", args.seeds, "--out", args.runs, "--device", args.device,
              "--no-progress"]
    if args.data:
        stem = result_stem(f"fewshot_{args.data.rstrip('/').rpartition('/')[2]}", device, environment(device))
        flags = ["--data", args.data, "--model", args.model, "--pretrained", args.pretrained, *common]
    else:
        checkpoint = offline_demo_checkpoint(ZeroShotConfig(out=args.runs, device=args.device, progress=False), 0)
        stem = result_stem("fewshot_clip_demo", device, environment(device))
        flags = ["--data", "synthetic", "--model", DEMO_ARCH, "--pretrained", str(checkpoint), "--workers", "0",
                 *common, *DEMO_BUDGET]
    return finetune_clip.main([*flags, *passthrough, "--results", stem])


if __name__ == "__main__":
    main()
