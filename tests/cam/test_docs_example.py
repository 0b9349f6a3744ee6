"""The CAM example of the README and docs/explanations.md runs as written, and is the same in both."""
import contextlib
import io
import re

from tests.support import ROOT

EXAMPLE = re.compile(r"<!-- example: cam .*?-->\n```python\n(?P<code>.*?)```", re.S)


def example(page: str) -> str:
    found = EXAMPLE.findall((ROOT / page).read_text())
    assert len(found) == 1, f"{page}: expected one marked CAM example, found {len(found)}"
    return found[0]


def test_the_cam_example_runs_and_gives_what_its_comments_say():
    code = example("README.md")
    assert code == example("docs/explanations.md")
    assert len(code.strip().splitlines()) <= 12
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md example", "exec"), namespace)
    out, maps = namespace["out"], namespace["maps"]
    assert out.maps.shape == (2, 2, 64, 64) and out.classes.shape == out.scores.shape == (2, 2)
    assert 0 <= out.maps.min() and out.maps.max() <= 1 and maps.shape == (2, 1, 64, 64)
    assert "['features']" in printed.getvalue() and "BHWC" in printed.getvalue()  # Swin: channels-last, resolved
