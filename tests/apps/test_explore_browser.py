"""The explorer rendered in a real headless browser (Debian's chromium): the page opens with its first image
explained, and the overlay region of a screenshot holds the overlay, not a blank."""
import json

import numpy as np
import pytest

from sportsnet.apps import explore
from sportsnet.apps.explore import Explorer
from tests.apps.test_explore import train_tiny_run
from tests.support.browser import Browser, find_chromium, region_stats

pytest.importorskip("gradio", reason="the explorer's extra is not installed (pip install 'sportsnet[app]')")
pytest.importorskip("websocket", reason="websocket-client (the test extra) drives the browser")

# The first overlay of the gallery, once its image has loaded: its box on the page, scrolled into view.
FIRST_OVERLAY = """(() => {
  const img = [...document.querySelectorAll('#overlays img')].find(i => i.complete && i.naturalWidth > 0);
  if (!img) return null;
  img.scrollIntoView({block: 'center'});
  const r = img.getBoundingClientRect();
  return JSON.stringify({x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height});
})()"""


def test_the_page_opens_with_an_overlay_in_a_headless_browser(tmp_path):
    chromium, why = find_chromium()
    if chromium is None:
        pytest.skip(why)
    explorer = Explorer.from_run(train_tiny_run(tmp_path), device="cpu", precision="fp32")
    app = explore.build_app(explorer, methods=["gradcam"])
    app.launch(prevent_thread_lock=True, quiet=True)
    browser = Browser(chromium)
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=app.local_url)
        box = json.loads(browser.wait_for(FIRST_OVERLAY))
        assert box["width"] >= 32 and box["height"] >= 32, box
        shot = browser.screenshot(box)
        browser.screenshot().save(tmp_path / "page.png")  # for a human when this fails
        shot.save(tmp_path / "overlay.png")
    finally:
        browser.close()
        app.close()
    want = explorer.explain(explorer.examples[0], ["gradcam"]).overlays["gradcam"]
    mean, spread = region_stats(shot)
    want_mean, want_spread = region_stats(want)
    assert spread > 10, f"the overlay region is blank (pixel deviation {spread:.1f}); see {tmp_path}"
    # The thumbnail is the overlay scaled (and maybe cropped) by the page: its colours, not its pixels.
    assert np.abs(mean - want_mean).max() < 40, (mean, want_mean, tmp_path)
