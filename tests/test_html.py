"""The rendered book, as a browser gets it (issue 19): checks on the built HTML.

Runs only when ``SPARSEKIT_BOOK_HTML`` names a built book (``make test`` sets it to
``_build/html`` right after ``jupyter-book build``), so a stale build is never checked:

* one search box: no pydata-sphinx-theme persistent search field in the header band;
* sphinx-thebe's config script (``const THEBE_JS_URL``) once per page, or the browser
  reports "Identifier 'THEBE_JS_URL' has already been declared";
* no raw reStructuredText ````literal```` left in the prose (a docstring's ````x````s
  is not markup and shows its backticks), code blocks aside;
* the bibliography lists exactly ``book/references.bib`` and every entry is cited on some page,
  with one citation style: numbered notes in the text, an unlabelled list on the bibliography page;
* no page points readers to DESIGN.md, which is not part of the book.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILT = os.environ.get("SPARSEKIT_BOOK_HTML")
pytestmark = pytest.mark.skipif(not BUILT, reason="set SPARSEKIT_BOOK_HTML=_build/html after building the book")


def _site() -> Path:
    site = Path(BUILT)
    if not site.is_absolute():
        site = ROOT / site
    assert (site / "book" / "intro.html").is_file(), f"no built book at {site}"
    return site


def _pages() -> dict[str, str]:
    site = _site()
    pages = {str(p.relative_to(site)): p.read_text(encoding="utf-8")
             for p in sorted(site.glob("**/*.html")) if "_static" not in p.parts and "_sources" not in p.parts}
    chapters = [p for p in pages if p.startswith("notebooks/")]
    assert chapters and "book/bibliography.html" in pages, sorted(pages)
    return pages


def prose(page: str) -> str:
    """The page's visible text outside code blocks, scripts and styles."""
    page = re.sub(r"<(script|style|pre)\b.*?</\1>", " ", page, flags=re.S | re.I)
    page = re.sub(r'<div class="highlight[^"]*">.*?</div>', " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def header(page: str) -> str:
    m = re.search(r"<header\b.*?</header>", page, flags=re.S)
    return m.group(0) if m else ""


def test_one_search_box():
    for name, page in _pages().items():
        if name in ("search.html", "genindex.html", "py-modindex.html"):
            continue
        assert "search-button-field" not in header(page), f"{name}: a second search box in the header band"
        assert page.count("search-button-field") <= 1, f"{name}: {page.count('search-button-field')} search boxes"


def test_thebe_config_script_once():
    counted = {name: page.count("const THEBE_JS_URL") for name, page in _pages().items()}
    assert any(counted.values()), "sphinx-thebe's config script is on no page"
    twice = {name: n for name, n in counted.items() if n > 1}
    assert not twice, f"THEBE_JS_URL declared more than once: {twice}"


def test_no_raw_double_backticks():
    raw = {}
    for name, page in _pages().items():
        text = prose(page)
        hits = [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in re.finditer("``", text)]
        if hits:
            raw[name] = hits[:3]
    assert not raw, f"raw ``literals`` in the rendered text: {raw}"


def _bib_keys() -> list[str]:
    return re.findall(r"^@\w+\{([^,\s]+),", (ROOT / "book" / "references.bib").read_text(), flags=re.M)


def test_bibliography_lists_only_cited_entries():
    pages = _pages()
    keys = _bib_keys()
    bib = pages["book/bibliography.html"]
    body = bib[bib.find('<ul class="simple"'):]
    entries = re.findall(r"<li\b[^>]*><p>", body[:body.find("</ul>")])
    assert len(entries) == len(keys), f"bibliography page lists {len(entries)} entries, references.bib has {len(keys)}"
    assert 'class="label"' not in bib, "bibliography entries carry citation labels (e.g. [BLeonardC13])"
    cited = set()
    for name, page in pages.items():
        if name != "book/bibliography.html":
            cited |= set(re.findall(r'href="#footcite-([^"]+)"', page))
    uncited = sorted(set(keys) - cited)
    assert not uncited, f"in the bibliography but cited on no page: {uncited}"


def test_one_citation_style():
    """Numbered notes everywhere: no author-year {cite} links left in any page."""
    for name, page in _pages().items():
        assert 'class="reference internal" href="bibliography.html#id' not in page, name
        assert not re.search(r'href="[^"]*bibliography\.html#id\d+"', page), f"{name}: an author-year citation"


def test_no_design_doc_references():
    for name, page in _pages().items():
        assert "DESIGN" not in prose(page), f"{name}: points to DESIGN.md, which is not in the book"


def test_closed_progress_bars_take_no_space():
    """tqdm bars closed with leave=False are saved with ``visibility: hidden`` (a blank gap the
    height of each bar); _static/book.css takes them out of the layout on every chapter page."""
    site = _site()
    css = (site / "_static" / "book.css").read_text()
    assert re.search(r'\.widget-hbox\[style\*="visibility: hidden"\]\s*\{\s*display:\s*none', css), css
    for name, page in _pages().items():
        if name.startswith("notebooks/"):
            assert "_static/book.css" in page, f"{name}: book.css not linked"
