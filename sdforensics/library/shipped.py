"""Where the shipped registry (``reference_hashes/``) is, for an editable and a wheel install alike.

The source of truth is the top-level ``reference_hashes/`` folder of the source tree. A built
wheel carries a copy of it as package data, ``sdforensics/data/reference_hashes/`` (``setup.py``
copies it at build time, MANIFEST.sha256 included, so ``sdf refs verify`` still checks it).
The installed copy wins when it exists; a source checkout (editable install) reads the
top-level folder directly.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
"""The installed ``sdforensics`` package folder (this module is ``sdforensics/library/shipped.py``)."""
INSTALLED = _PACKAGE / "data" / "reference_hashes"
"""The copy a wheel installs as package data."""
SOURCE = _PACKAGE.parent / "reference_hashes"
"""The top-level folder of a source checkout."""


def shipped_registry_dir() -> Path:
    """The shipped registry folder: the installed package-data copy, else the source tree's.

    >>> (shipped_registry_dir() / "known_models.json").is_file()
    True
    """
    if (INSTALLED / "known_models.json").is_file():
        return INSTALLED
    return SOURCE
