"""Decoding the metadata people embed in checkpoints, without trusting it.

Known forms:

* ``sd_merge_recipe`` -- A1111's checkpoint merger (``"type": "webui"``: primary/secondary/
  tertiary model hashes, ``interp_method``, ``multiplier``) and SuperMerger
  (``"type": "sd-webui-supermerger"``: ``mode``, ``model_a/b/c``, ``base_alpha``/``base_beta``,
  per-block ``weights_alpha``); other merger scripts are shown as they are;
* ``sd_merge_models`` -- sha256 -> {name, legacy_hash, nested recipe};
* ``mecha_recipe`` -- sd-mecha's text recipe;
* ``modelspec.*`` -- Stability's ModelSpec (architecture, title, author, hash_sha256 ...);
* ``ss_*`` -- kohya training metadata.

Values are decoded with :func:`json.loads` only (nothing is ever evaluated or rendered as a
template), and every string is passed through :func:`~sdforensics.core.safetext.printable` before
anyone prints it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdforensics.core.errors import CorruptFileError
from sdforensics.core.safetext import printable

_JSON_CAP = 4 << 20


@dataclass(frozen=True)
class DeclaredModel:
    sha256: str | None
    name: str | None
    legacy_hash: str | None


@dataclass(frozen=True)
class DeclaredRecipe:
    """What the metadata *says* the file was made of (checked against the weights elsewhere)."""

    tool: str
    mode: str | None
    text: str
    models: tuple[DeclaredModel, ...]
    multiplier: float | None = None
    block_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Metadata:
    raw: dict[str, str]
    declared: DeclaredRecipe | None
    modelspec: dict[str, str]
    training: dict[str, str]
    """kohya ``ss_*`` keys (large ones such as tag frequencies are summarised)."""
    problems: tuple[str, ...]


def _loads(text: str) -> Any:
    if len(text) > _JSON_CAP:
        return None
    try:
        return json.loads(text, parse_constant=lambda c: None)
    except (ValueError, RecursionError):
        return None


def _num(value: Any, field: str) -> float | None:
    """``value`` as a float; None when it is not a number; CorruptFileError naming ``field`` when it is a
    number no float holds (``10**400``, ``1e400``, ``"inf"``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    except OverflowError:
        out = float("inf")
    if not math.isfinite(out):
        raise CorruptFileError(f"metadata field {field} is {printable(str(value)[:40], 40)}"
                               f"{'...' if len(str(value)) > 40 else ''}, not a finite number")
    return out


def _hash_str(value: Any) -> str | None:
    return printable(value, 80) if isinstance(value, str) and value else None


def _models(raw_models: Any, hashes: list[str | None]) -> tuple[DeclaredModel, ...]:
    table = raw_models if isinstance(raw_models, dict) else {}
    out = []
    for h in hashes:
        if not h:
            continue
        found = table.get(h)
        info: dict[str, Any] = found if isinstance(found, dict) else {}
        out.append(
            DeclaredModel(
                sha256=printable(h, 80),
                name=_hash_str(info.get("name")),
                legacy_hash=_hash_str(info.get("legacy_hash")),
            )
        )
    return tuple(out)


def _label(model: DeclaredModel | None, fallback: str) -> str:
    if model is None:
        return fallback
    return model.name or (model.sha256[:10] if model.sha256 else fallback)


def _webui(recipe: dict[str, Any], models_raw: Any) -> DeclaredRecipe:
    hashes = [recipe.get(k) for k in ("primary_model_hash", "secondary_model_hash", "tertiary_model_hash")]
    models = _models(models_raw, [h if isinstance(h, str) else None for h in hashes])
    m = _num(recipe.get("multiplier"), "sd_merge_recipe.multiplier")
    method = printable(str(recipe.get("interp_method", "?")), 40)
    a, b, c = (_label(models[i] if i < len(models) else None, n) for i, n in enumerate("ABC"))
    if method == "Weighted sum" and m is not None:
        text = f"{1 - m:.3g} x {a} + {m:.3g} x {b}"
    elif method == "Add difference" and m is not None:
        text = f"{a} + {m:.3g} x ({b} - {c})"
    else:
        text = f"{method} of {', '.join(_label(x, '?') for x in models)}"
    return DeclaredRecipe("A1111 checkpoint merger", method, text, models, m)


def _supermerger(recipe: dict[str, Any], models_raw: Any) -> DeclaredRecipe:
    hashes = [recipe.get(k) for k in ("model_a", "model_b", "model_c")]
    models = _models(models_raw, [h if isinstance(h, str) else None for h in hashes])
    alpha = _num(recipe.get("base_alpha"), "sd_merge_recipe.base_alpha")
    mode = printable(str(recipe.get("mode", "?")), 40)
    weights = recipe.get("weights_alpha")
    blocks: tuple[float, ...] | None = None
    if isinstance(weights, str):
        weights = weights.split(",")
    if isinstance(weights, list):
        parsed = [_num(w, "sd_merge_recipe.weights_alpha") for w in weights]
        if parsed and all(p is not None for p in parsed):
            blocks = tuple(float(p) for p in parsed if p is not None)
    a, b, c = (_label(models[i] if i < len(models) else None, n) for i, n in enumerate("ABC"))
    if "Add" in mode and alpha is not None:
        text = f"{a} + {alpha:.3g} x ({b} - {c})"
    elif alpha is not None:
        text = f"{1 - alpha:.3g} x {a} + {alpha:.3g} x {b}"
    else:
        text = f"{mode} of {a}, {b}"
    if blocks:
        text += " with block weights " + ",".join(f"{w:g}" for w in blocks)
    return DeclaredRecipe("SuperMerger", mode, text, models, alpha, blocks)


def decode(raw: Mapping[str, str]) -> Metadata:
    """Decode a safetensors ``__metadata__`` mapping (see module docstring)."""
    problems: list[str] = []
    declared: DeclaredRecipe | None = None
    recipe_text = raw.get("sd_merge_recipe")
    models_raw = _loads(raw["sd_merge_models"]) if "sd_merge_models" in raw else None
    if recipe_text is not None:
        recipe = _loads(recipe_text)
        if not isinstance(recipe, dict):
            problems.append("sd_merge_recipe is not a JSON object; shown as text")
            declared = DeclaredRecipe("unknown merger", None, printable(recipe_text, 200), ())
        elif recipe.get("type") == "webui":
            declared = _webui(recipe, models_raw)
        elif recipe.get("type") == "sd-webui-supermerger":
            declared = _supermerger(recipe, models_raw)
        else:
            tool = printable(str(recipe.get("type", "unknown merger")), 60)
            declared = DeclaredRecipe(tool, None, printable(json.dumps(recipe)[:300], 300), ())
    elif "mecha_recipe" in raw:
        text = raw["mecha_recipe"]
        lines = [ln for ln in text.splitlines() if ln.strip()]
        declared = DeclaredRecipe("sd-mecha", None, printable(" | ".join(lines[-3:]), 300), ())
    modelspec = {
        k: printable(v, 300) for k, v in raw.items() if k.startswith("modelspec.") and "thumbnail" not in k
    }
    training: dict[str, str] = {}
    for key, value in raw.items():
        if not key.startswith("ss_"):
            continue
        if len(value) > 500:
            training[key] = f"({len(value):,} characters)"
        else:
            training[key] = printable(value, 500)
    return Metadata(dict(raw), declared, modelspec, training, tuple(problems))
