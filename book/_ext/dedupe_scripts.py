"""Sphinx extension: emit each inline ``<script>`` once per page.

Extensions that register an inline script (``app.add_js_file(None, body=...)``) after the
HTML builder is set up get it twice: once under the name ``None`` and once as ``''`` when the
builder re-reads the registry, and Sphinx 7.4 compares the two as different files. For
sphinx-thebe that is ``const THEBE_JS_URL = ...`` twice, a console error in every browser
("Identifier 'THEBE_JS_URL' has already been declared", issue 19). Same script, same
attributes -> kept once, in first-seen order.
"""

from __future__ import annotations

from typing import Any


def _key(js: Any) -> tuple:
    attrs = getattr(js, "attributes", {}) or {}
    return (getattr(js, "filename", js) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))


def dedupe(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for js in scripts:
        key = _key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique  # a new list: the builder's own list is shared between pages


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
