"""The ``sdforensics.analysis/1`` JSON document (contract in DESIGN.md).

Fields a stage did not compute are ``null``. Strings from the file (names, metadata) are cut
to a sane length; JSON escaping makes control characters safe.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from sdforensics.fingerprinting.similarity import Similarity
from sdforensics.library.registry import RegistryMatch, lineage_hint
from sdforensics.recipe.text import recipe_to_json
from sdforensics.report.tensor_table import tensor_rows

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
            "list": [
                {"name": r.name, "shape": list(r.shape), "dtype": r.dtype, "values": r.numel,
                 "component": r.component, "block": r.block}
                for r in tensor_rows(a)
            ],
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
    if a.lora is not None:
        doc["lora"] = a.lora.to_json()
    if a.embedding is not None:
        doc["embedding"] = a.embedding.to_json()
    if a.registry is not None:
        doc["registry"] = [match_json(m) for m in a.registry]
    if a.library is not None:
        lib = a.library
        doc["library"] = {
            "searched": [str(p) for p in lib.searched],
            "references": lib.references,
            "loras": lib.loras,
            "skipped": list(lib.skipped),
            "changed": list(lib.changed),
        }
    if a.identical is not None:
        doc["identical"] = a.identical
    if a.similarity is not None:
        doc["similarity"] = similarity_json(a.similarity)
    if a.recipe is not None:
        doc["recipe"] = recipe_to_json(a.recipe)
    if a.summary is not None:
        doc["summary"] = list(a.summary)
    return doc


def match_json(m: RegistryMatch) -> dict[str, Any]:
    """One known-hash registry match (DESIGN.md ``registry`` item)."""
    e = m.entry
    return {
        "name": e.name,
        "family": e.family,
        "kind": e.kind,
        "file": e.file,
        "how": m.how,
        "strength": m.strength,
        "warning": m.warning,
        "source": e.source,
        "lineage": lineage_hint(e),
        "official": e.official,
    }


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def similarity_json(sim: Similarity) -> dict[str, Any]:
    """Overall and per-block cosines per reference (DESIGN.md ``similarity``)."""
    return {
        "base": sim.base,
        "convention": sim.convention,
        "references": [
            {
                "reference": name,
                "delta_cosine": _num(sim.overall_delta[j]),
                "raw_cosine": _num(sim.overall_raw[j]),
                "blocks": {b: _num(sim.block_delta[i, j]) for i, b in enumerate(sim.blocks)},
            }
            for j, name in enumerate(sim.references)
        ],
    }
