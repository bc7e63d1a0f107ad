"""sdforensics: what did the author mix in, and how much?

The public API (everything else is internal and may move):

>>> import sdforensics                                              # doctest: +SKIP
>>> a = sdforensics.analyze("mix.safetensors", library="lib")       # doctest: +SKIP
>>> a.recipe.kind, a.recipe.unexplained                             # doctest: +SKIP
('weighted_sum', 0.004)
>>> print(a.to_text())                                               # doctest: +SKIP

* :func:`analyze` -- fingerprint, compare with the library, estimate the recipe (an :class:`AnalysisView`:
  the typed :class:`Analysis` plus ``to_text`` / ``to_json`` / ``to_html``, frames and figures);
* :func:`identify` -- what the file is, without fingerprint or comparison;
* :func:`fingerprint` -- a model's (or a LoRA's) :class:`Fingerprint`;
* :class:`Library` -- the reference library on disk (``add``, ``remove``, ``entries``);
* :func:`compare` -- two files side by side (``sdf compare``);
* :func:`open_checkpoint` -- any supported file or folder, headers validated, as a context manager
  (``with open_checkpoint(p) as ckpt:``); :func:`read_layout` -- its canonical tensor names and
  architecture from headers alone;
* :func:`map_collection` -- the lineage of a whole library (``sdf map``): a :class:`CollectionMap` of
  nodes (kind, recipe, unexplained share), edges (fine-tune, merge with weight, copy, component; each
  with a confidence), duplicate groups and the clustered similarity of the changes; render it with
  :mod:`sdforensics.report.render_map` (``map_to_html``, ``map_to_json``, ``map_to_dot``);
* :func:`read_lora` -- a LoRA file as a :class:`LoraFile` (layers mapped to model keys, ``deltas()``);
* result types: :class:`Analysis`, :class:`LibrarySearch`, :class:`Similarity`, :class:`RecipeEstimate`,
  :class:`RegistryMatch`, :class:`Fingerprint`, :class:`LoraDescription` (``Analysis.lora``); errors
  derive from :class:`SdfError`.

Names load on first use, so ``import sdforensics`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Analysis": "sdforensics.analysis",
    "LibrarySearch": "sdforensics.analysis",
    "AnalysisView": "sdforensics.report.view",
    "Fingerprint": "sdforensics.fingerprinting.fingerprint",
    "Similarity": "sdforensics.fingerprinting.similarity",
    "Library": "sdforensics.library.store",
    "RegistryMatch": "sdforensics.library.registry",
    "RecipeEstimate": "sdforensics.recipe.results",
    "SdfError": "sdforensics.core.errors",
    "open_checkpoint": "sdforensics.readers",
    "read_layout": "sdforensics.model.stream",
    "read_lora": "sdforensics.lora.files",
    "LoraFile": "sdforensics.lora.files",
    "LoraDescription": "sdforensics.lora.description",
    "map_collection": "sdforensics.collection.mapping",
    "CollectionMap": "sdforensics.collection.lineage",
}

__all__ = ["__version__", "analyze", "identify", "fingerprint", "compare", *_EXPORTS]


def analyze(path: Any, library: Any = None, device: str = "auto", **kwargs: Any) -> Any:
    """:func:`sdforensics.api.analyze`, returned as an :class:`AnalysisView` (typed fields plus views)."""
    from sdforensics.api import analyze as _analyze
    from sdforensics.report.view import AnalysisView

    return AnalysisView.of(_analyze(path, library=library, device=device, **kwargs))


def identify(path: Any, **kwargs: Any) -> Any:
    """:func:`sdforensics.api.identify` as an :class:`AnalysisView`."""
    from sdforensics.api import identify as _identify
    from sdforensics.report.view import AnalysisView

    return AnalysisView.of(_identify(path, **kwargs))


def fingerprint(path: Any, device: str = "auto") -> Any:
    """The :class:`Fingerprint` of a model or a LoRA (a LoRA: its change at strength 1)."""
    from sdforensics.api import fingerprint_any

    return fingerprint_any(path, device=device)[1]


def compare(a: Any, b: Any, **kwargs: Any) -> Any:
    """Two files side by side, as ``sdf compare`` prints them."""
    from sdforensics.file_compare import compare_files

    return compare_files(a, b, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sdforensics' has no attribute {name!r}")
