"""Making untrusted strings (tensor names, metadata) safe to print.

Control characters (including ANSI escape sequences and terminal controls) are shown as
``\\xNN`` escapes; long values are cut with a note of their length. HTML escaping happens in
the HTML renderer on top of this.

>>> printable("red\\x1b[31m!")
'red\\\\x1b[31m!'
"""

from __future__ import annotations

import unicodedata


def human_size(n: float) -> str:
    """Bytes in decimal units: ``8.57 MB``.

    >>> human_size(8_568_622)
    '8.57 MB'
    """
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def percent(fraction: float) -> str:
    """A share as a whole percentage that never rounds a small part away: ``<0.1%``, ``>99.9%``.

    >>> [percent(x) for x in (0.0, 0.00001, 0.004, 0.25, 0.99999, 1.0)]
    ['0%', '<0.1%', '0.4%', '25%', '>99.9%', '100%']
    """
    if 0 < fraction < 0.001:
        return "<0.1%"
    if 0.999 < fraction < 1:
        return ">99.9%"
    if 0 < fraction < 0.01 or 0.99 < fraction < 1:
        return f"{fraction:.1%}"
    return f"{fraction:.0%}"


def _hidden(ch: str) -> bool:
    """Control (Cc), format (Cf: every bidi embedding/override/isolate/mark, zero-width and BOM),
    surrogate, private-use and unassigned characters, and line/paragraph separators."""
    cat = unicodedata.category(ch)
    return cat[0] == "C" or cat in ("Zl", "Zp")


def printable(text: str, limit: int | None = 500) -> str:
    r"""``text`` with control, bidi and invisible characters escaped, cut to ``limit`` characters (None: no cut).

    >>> printable("a\u202ab\u2067c\u200bd\u061ce\ufefff\u00adg")
    'a\\u202ab\\u2067c\\u200bd\\u061ce\\ufefff\\xadg'
    """
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0 or (code >= 0xA0 and _hidden(ch)):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
        else:
            out.append(ch)
    result = "".join(out)
    if limit is not None and len(result) > limit:
        return result[:limit] + f"... ({len(text):,} characters)"
    return result


def terminal_safe(s: str) -> str:
    r"""``s`` with every non-printable character (control, bidi, invisible) as its Python escape, uncut:
    for terminal lines and error messages that name untrusted strings.

    >>> terminal_safe("a\u202eb\u200bc\x1b")
    'a\\u202eb\\u200bc\\x1b'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
