"""The ``sdforensics.analysis/1`` JSON document (contract in DESIGN.md).

Fields a stage did not compute are ``null``. Strings from the file (names, metadata) are cut
to a sane length; JSON escaping makes control characters safe.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdforensics.analysis import Analysis

SCHEMA = "sdforensics.analysis/1"


def _cut(text: str, limit: int = 10_000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def analysis_to_json(a: Analysis) -> dict[str, Any]:
    arch = a.architecture
    fmt = a.layout.format
    h = a.hashes
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "file": {
            "path": str(a.path),
            "format": fmt.container,
            "bytes": h.bytes if h else None,
            "sha256": h.sha256 if h else None,
            "autov1": h.autov1 if h else None,
            "autov2": h.autov2 if h else None,
            "autov3": h.autov3 if h else None,
            "blake3": h.blake3 if h else None,
            "crc32": h.crc32 if h else None,
        },
        "architecture": {
            "family": arch.family,
            "name": arch.name,
            "label": arch.label,
            "variant": arch.variant,
            "components": list(arch.components),
            "text_encoders": list(arch.text_encoders),
            "width_factor": arch.width_factor,
            "score": arch.match.score if arch.match else None,
            "runner_up": asdict(arch.runner_up) if arch.runner_up else None,
            "missing_keys": {"count": arch.n_missing, "examples": list(arch.missing_keys)},
            "extra_keys": {"count": arch.n_extra, "examples": list(arch.extra_keys)},
            "hints": list(arch.hints),
            "key_notes": list(a.layout.mapping.notes),
        },
        "tensors": {
            "count": a.identity.n_tensors,
            "params": a.identity.n_params,
            "dtypes": a.identity.dtypes,
        },
        "content_hashes": a.identity.component_hashes,
        "identical": {"unet": None, "text_encoder": None, "vae": None},
        "registry": None,
        "similarity": None,
        "recipe": None,
        "problems": [asdict(p) for p in a.problems],
        "metadata": {
            "raw": {_cut(k, 200): _cut(v) for k, v in a.metadata.raw.items()},
            "declared": asdict(a.metadata.declared) if a.metadata.declared else None,
            "modelspec": a.metadata.modelspec,
            "training": a.metadata.training,
        },
        "pickle": (
            {
                "globals": [
                    {"global": g.qualname, "verdict": g.verdict, "member": g.member} for g in fmt.globals
                ]
            }
            if fmt.container.startswith("pickle")
            else None
        ),
    }
    for key, value in a.extras.items():
        if not key.startswith("_"):  # private: live objects for notebooks, not JSON
            doc[key] = value
    return doc
