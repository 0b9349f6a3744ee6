"""Execute every notebook in notebooks/ end to end, as CI does (``make check-notebooks``).

    python -m tools.run_notebooks                  # all of them, with their CI parameters
    python -m tools.run_notebooks quickstart       # one

Each notebook runs in a fresh kernel of this interpreter (nbclient), in a temporary working folder, with a cell
injected after its ``parameters`` cell (papermill's convention) that sets QUICK = True (every step at toy size)
and points the real-data notebook at a synthetic tree in the 100-Sports layout, so nothing is downloaded. The
committed notebooks carry no outputs (tests/test_notebooks.py checks that); the executed copies are written to
--out for a look. Fails (exit 1, naming the notebook, the cell and the error) if a cell raises or all of them
together take longer than --budget seconds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: The CI budget of all notebooks together (issue 29: three minutes), in seconds.
BUDGET_S = 180.0


def ci_parameters(name: str, scratch: Path) -> dict[str, object]:
    """What CI sets in notebook ``name``: toy sizes, and a synthetic tree instead of the real data."""
    params: dict[str, object] = {"QUICK": True, "WORK": str(scratch / "work")}
    if name == "sports100":
        from sportsnet.data import make_synthetic_sports

        tree = make_synthetic_sports(scratch / "sports100", num_classes=4, train_per_class=16, eval_per_class=5,
                                     size=48)
        params.update(DATA=str(tree), WEIGHTS="none", CLIP_MODEL="sportsnet-demo-rn", CLIP_PRETRAINED="none")
    return params


def inject(nb, params: dict[str, object]) -> None:
    """Insert a cell setting ``params`` after the cell tagged ``parameters`` (an error if there is none)."""
    import nbformat

    where = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(where) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(where)}")
    source = "# Parameters injected by tools/run_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(where[0] + 1, cell)


def run(path: Path, out_dir: Path, timeout: float) -> float:
    """Execute one notebook; the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix=f"nb-{path.stem}-") as scratch:
        inject(nb, ci_parameters(path.stem, Path(scratch)))
        client = NotebookClient(nb, timeout=int(timeout), kernel_name="python3",
                                resources={"metadata": {"path": scratch}})
        start = time.perf_counter()
        try:
            client.execute()
        finally:
            out_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out_dir / path.name)
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all in notebooks/)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all of them together")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "sportsnet-notebooks"),
                        help="where the executed copies go")
    args = parser.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.names:
        wanted = {n.removesuffix(".ipynb") for n in args.names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            parser.error(f"no notebook(s) {sorted(unknown)} in {NOTEBOOKS}; there are {[p.stem for p in paths]}")
        paths = [p for p in paths if p.stem in wanted]
    from nbclient.exceptions import CellExecutionError

    total = 0.0
    for path in paths:
        try:
            seconds = run(path, Path(args.out), timeout=args.budget)
        except CellExecutionError as e:
            print(f"FAILED {path.relative_to(ROOT)}: {e}", file=sys.stderr)
            return 1
        total += seconds
        print(f"ran {path.relative_to(ROOT)} in {seconds:.0f} s (executed copy: {Path(args.out) / path.name})")
    print(f"all {len(paths)} notebook(s) in {total:.0f} s (budget {args.budget:.0f} s)")
    if total > args.budget:
        print(f"FAILED: the notebooks took {total:.0f} s, over the {args.budget:.0f} s budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
