"""The report as a reader sees it: rendered by headless Chromium at 1280x900, then read back.

A copy of the report gets a test-only script that writes, after load, where things are on the
page (``getBoundingClientRect``) and each video's decoded size into data attributes; Chromium's
``--dump-dom`` prints the page with them. The report itself carries no script.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.vidworld.report_fixtures import make_output
from vidworld.report import write_report

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="needs chromium on PATH (Debian: apt-get install --no-install-recommends chromium)",
    ),
]

VIEWPORT = (1280, 900)

# Test only: positions relative to the top of the page, in CSS pixels, as data-* attributes.
MEASURE = """<script>
function measure() {
  document.body.dataset.viewportHeight = window.innerHeight;
  document.body.dataset.viewportWidth = window.innerWidth;
  for (const el of document.querySelectorAll("#verdict, .fig, h2, details, video")) {
    const r = el.getBoundingClientRect();
    el.dataset.top = r.top + window.scrollY;
    el.dataset.bottom = r.bottom + window.scrollY;
    el.dataset.renderedWidth = r.width;
    if (el.tagName === "VIDEO") el.dataset.videoWidth = el.videoWidth;
  }
}
window.addEventListener("load", measure);
for (const v of document.querySelectorAll("video")) v.addEventListener("loadeddata", measure);
</script>"""


class Elements(HTMLParser):
    """Start tags (with attributes) and the text, each with its offset in the document's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None], int]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs), len(self.text)))

    def handle_data(self, data):
        self.text += data

    def all(self, tag: str, cls: str = "") -> list[dict[str, str | None]]:
        return [a for t, a, _ in self.tags if t == tag and cls in (a.get("class") or "").split() + [""]]

    def first_at(self, tag: str) -> int:
        return next(at for t, _, at in self.tags if t == tag)


def render(html_path: Path, tmp_path: Path) -> Elements:
    """``--dump-dom`` of the page after load, at the viewport size, with MEASURE appended to a copy."""
    page = tmp_path / "measured.html"
    page.write_text(html_path.read_text().replace("</body>", MEASURE + "</body>"))
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
        "--autoplay-policy=no-user-gesture-required",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    doc = Elements()
    doc.feed(proc.stdout)
    doc.close()
    return doc


def px(attrs: dict[str, str | None], key: str) -> float:
    value = attrs.get(f"data-{key}")
    assert value is not None, f"the measuring script did not run (no data-{key} on {attrs.get('class')})"
    return float(value)


def test_a_reader_sees_the_verdict_and_headline_figures_first_and_large_videos(tmp_path):
    out = make_output(tmp_path / "run1", dynamics_run=True)
    doc = render(write_report(out), tmp_path)
    (body,) = doc.all("body")
    # The fold: the page area of a 1280x900 window (Chromium keeps some of the height for its own UI).
    fold = px(body, "viewport-height")
    assert px(body, "viewport-width") == VIEWPORT[0] and 0.7 * VIEWPORT[1] <= fold <= VIEWPORT[1]

    # What is above the fold: the whole verdict block, sentence and every headline figure.
    (verdict,) = doc.all("section")
    figs = doc.all("div", "fig")
    assert len(figs) == 5
    assert px(verdict, "bottom") <= fold
    assert all(px(f, "bottom") <= px(verdict, "bottom") for f in figs)
    text_before_tables = doc.text[: min(doc.first_at("table"), doc.first_at("details"))]
    for seen in (
        "The dynamics model loses to copying the last frame at horizon 3",  # the verdict in words
        "Tokenizer PSNR",
        "29.88",
        "below the 32 dB target",
        "Beats copying the last frame?",
        "loses at horizon 3",
        "Action sensitivity (dB)",
        "+0.50 → +2.00",
        "Counterfactual response",
        "ratio 0.44",
        "Training time",
    ):
        assert seen in text_before_tables, seen
    # Nothing folded or tabular starts above the verdict's end; the raw tables come closed.
    assert all(px(d, "top") >= px(verdict, "bottom") for d in doc.all("details"))
    assert not [d for d in doc.all("details") if "open" in d]

    # The videos: decoded by the browser, and drawn at 4x their width or more, pixelated.
    videos = doc.all("video")
    assert len(videos) == 3  # rollout, tokenizer reconstruction, counterfactual
    for v in videos:
        native = px(v, "video-width")
        assert native > 0, "Chromium did not decode the embedded mp4"
        assert px(v, "rendered-width") >= 4 * native, (v.get("width"), native)
        assert px(v, "top") >= px(verdict, "bottom")
    h2 = [px(h, "top") for h in doc.all("h2")]
    assert h2 == sorted(h2) and px(videos[0], "top") < h2[1]  # the videos before the curve
