"""Labels that carry markup (SPEC §6): a manifest names classes `<script>…`,
`"><img onerror=…>` and the like; they reach the HTML report as class names, tags, parameters
and promotion reasons. The page shows them as text: a browser parses no element or attribute
out of them."""

from __future__ import annotations

import csv
import html
from html.parser import HTMLParser
from pathlib import Path

from lstmpipe.lib.registry import report
from lstmpipe.lib.sources.discover import read_manifest
from lstmpipe.lib.state.store import LocalStore

EVIL = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "'><svg onload=alert(3)>",
    "</td></tr></table><script>alert(4)</script>",
    "<!-- <style>body{display:none}</style>",
    '<iframe src="javascript:alert(5)"></iframe>&amp;',
]
PAGE_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "table",
    "tr",
    "th",
    "td",
    "p",
    "b",
    "code",
    "figure",
    "img",
    "figcaption",
}


class Page(HTMLParser):
    """What a browser would build: every element, attribute and run of text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def hostile_manifest(path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "label"])
        writer.writerows([f"clip_{i}.mp4", label] for i, label in enumerate(EVIL))
    return path


def values(labels: list[str]) -> dict:
    """A run's report values with the manifest's labels wherever data reaches the page."""
    per_class = {f"{key}/{name}": 0.5 for name in labels for key in ("precision", "recall", "f1")}
    return {
        "run_id": labels[0],
        "run_name": labels[1],
        "start_time": 0,
        "tags": {"lstmpipe.run_id": labels[2], "lstmpipe.labels": ",".join(labels)},
        "params": {"labels": labels[3], labels[4]: labels[5]},
        "metrics": {
            "lstm": {"test": {"accuracy": 0.5, "macro_f1": 0.5, **per_class}},
            "baseline": {"test": {"accuracy": 0.25, "macro_f1": 0.25}},
        },
        "plots": {},
        "versions": [
            {
                "name": labels[0],
                "version": "1",
                "tags": {"promotion.decision": labels[1], "promotion.reason": labels[2]},
            }
        ],
        "history": [{"time": "t", "action": labels[3], "decision": labels[4], "reason": labels[5]}],
    }


def test_markup_in_labels_is_text_on_the_page(tmp_path: Path) -> None:
    labels = list(read_manifest(hostile_manifest(tmp_path / "labels.csv")).values())
    assert labels == EVIL  # the manifest reader keeps them verbatim: escaping is the page's job

    path = Path(report.write(values(EVIL), LocalStore(tmp_path), "reports/run.html"))
    page = path.read_text()
    parsed = Page()
    parsed.feed(page)

    assert {tag for tag, _ in parsed.tags} <= PAGE_TAGS, {tag for tag, _ in parsed.tags} - PAGE_TAGS
    assert not [name for _, attrs in parsed.tags for name, _ in attrs if name.startswith("on")]
    assert not parsed.comments
    assert [tag for tag, _ in parsed.tags].count("style") == 1  # the page's own stylesheet only
    shown = "".join(parsed.text)
    for label in EVIL:  # escaped in the source, verbatim on screen
        assert html.escape(label, quote=True) in page and label in shown
    assert sorted(tmp_path.rglob("*")) == sorted(
        [tmp_path / "labels.csv", tmp_path / "reports", path]
    )
