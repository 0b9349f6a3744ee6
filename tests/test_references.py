"""Comments and docs that cite a file of the repository (``tests/engine/test_fit.py::test_...``,
``sportsnet/cam/layouts.py``) cite one that exists, with the test named: a moved or renamed file makes
this fail rather than leave a pointer to nothing."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"((?:tests|sportsnet|tools|benchmarks|experiments|csrc|docs)/[\w/.-]+\.(?:py|cu|cpp|h|md|json))"
                      r"(?:::(\w+))?")


def _citing_files():
    yield from (ROOT / "README.md", ROOT / "Makefile")
    yield from (ROOT / "docs").glob("*.md")
    yield from (ROOT / "benchmarks").glob("*.md")
    for folder in ("sportsnet", "tests", "tools", "benchmarks", "experiments"):
        yield from (ROOT / folder).rglob("*.py")


def test_every_cited_file_and_test_exists():
    broken = []
    for path in _citing_files():
        for m in CITATION.finditer(path.read_text()):
            cited, test = ROOT / m[1], m[2]
            if not cited.exists():
                broken.append(f"{path.relative_to(ROOT)}: {m[0]} (no such file)")
            elif test and not re.search(rf"\bdef {test}", cited.read_text()):
                broken.append(f"{path.relative_to(ROOT)}: {m[0]} (no such test)")
    assert broken == []
