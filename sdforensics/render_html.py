"""HTML report (placeholder until the report issue lands: a minimal escaped page)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdforensics.analysis import Analysis


def analysis_to_html(a: Analysis, fragment: bool = False) -> str:
    body = f"<pre>{html.escape(a.to_text())}</pre>"
    if fragment:
        return body
    return f"<!doctype html><meta charset='utf-8'><title>sdforensics</title>{body}"
