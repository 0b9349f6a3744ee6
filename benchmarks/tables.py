"""Markdown tables from benchmarks/results/*.json (what the READMEs show), so no number is copied by hand.

    python benchmarks/tables.py                 # every result file
    python benchmarks/tables.py gradcam_cpu     # one
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, table  # noqa: E402


def gradcam_table(p: dict, batches=(1, 64, 256)) -> str:
    rows = [[r["shape"], r["batch"], r["dtype"], r["method"], f"{r['compiled_op']['median_s'] * 1e3:.2f}",
             f"{r['compiled_op_out']['median_s'] * 1e3:.2f}", f"{r['reference']['median_s'] * 1e3:.2f}",
             f"{r['reference_compiled']['median_s'] * 1e3:.2f}" if "reference_compiled" in r else "-",
             f"{r['speedup_vs_reference']:.1f}x", f"{r['compiled_op']['effective_GBps']:.0f}",
             f"{100 * r['fraction_of_copy_bandwidth']:.0f}% / {100 * r['fraction_of_copy_bandwidth_out']:.0f}%"]
            for r in p["rows"] if r["batch"] in batches and (r["dtype"] == "fp32" or r["batch"] == 64)]
    env = p["environment"]
    t = p["target"]
    head = (f"`{env['device']}`, torch {env['torch']}, {env['time'][:10]}; copy bandwidth "
            f"{p['copy_bandwidth_GBps']:.1f} GB/s; output {p['output_size'][0]}x{p['output_size'][1]}.")
    verdict = "" if not t else (f"\n\nTarget ({t['shape']} B={t['batch']} {t['dtype']}: >= {t['speedup']:g}x the eager "
                                f"reference and >= {100 * t['copy_fraction']:.0f}% of copy bandwidth): measured "
                                f"{t['measured_speedup']:.1f}x and {100 * t['measured_copy_fraction']:.0f}%, "
                                f"**{'met' if t['met'] else 'not met'}**.")
    return head + "\n\n" + table(rows, ["shape", "B", "dtype", "method", "op ms", "op out= ms", "reference ms",
                                        "ref compiled ms", "vs ref", "op GB/s", "% of copy (op / out=)"]) + verdict


def explain_table(p: dict) -> str:
    from bench_explain import explain_table as render

    return render(p)


def train_table(p: dict) -> str:
    from bench_train import train_table as render

    return render(p)


def data_table(p: dict) -> str:
    from bench_data import data_table as render

    return render(p)


RENDERERS = {"gradcam": gradcam_table, "explain": explain_table, "train_step": train_table, "data_pipeline": data_table}


def main(argv=None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or sorted(p.stem for p in RESULTS.glob("*.json"))
    for name in names:
        payload = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"### {name}\n\n{RENDERERS[payload['benchmark']](payload)}\n")


if __name__ == "__main__":
    main()
