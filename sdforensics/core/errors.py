"""The one error family sdforensics raises for users.

Every error a user can cause (a bad file, a missing library, a wrong option) is an
:class:`SdfError`. The CLI turns it into one line on stderr and exit code 2; the Python
API lets it propagate. Messages name the file, say what is wrong, expected vs got where
that helps, and end with what to do when there is something to do.

>>> try:
...     raise CorruptFileError("model.safetensors: header is not valid JSON")
... except SdfError as err:
...     print(err)
model.safetensors: header is not valid JSON
"""

from __future__ import annotations


class SdfError(Exception):
    """Base class of every error meant for a user."""


class CorruptFileError(SdfError):
    """The file is malformed, truncated or inconsistent."""


class UnsafeFileError(SdfError):
    """The file asks to run code (a pickle naming a dangerous callable) or escapes its folder."""


class UnsupportedFormatError(SdfError):
    """The file is readable but is not a format or layout we can analyse."""


class LibraryError(SdfError):
    """The reference library is missing, malformed, or an entry is not found."""


class FingerprintError(SdfError):
    """A fingerprint file is malformed or of an incompatible scheme/version."""
