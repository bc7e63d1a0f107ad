"""Value types of a recipe estimate (frozen, JSON-friendly through :func:`recipe_to_json`).

Weights are *affine* over the references, the base included: they sum to 1, and add difference
``A + m (B - C)`` reads ``A: 1, B: m, C: -m``. Blocks use SuperMerger's ids (time_embed in IN00).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = (
    "copy",
    "weighted_sum",
    "finetune",
    "add_difference",
    "block_weighted",
    "component_swap",
    "ties",
    "dare",
    "lora",
    "unknown_method",
    "unknown",
)

BLOCK_CONVENTION = "supermerger: time_embed in IN00, final out. in OUT11, text encoder = BASE"


@dataclass(frozen=True)
class Weight:
    """One reference's affine weight with its 95% interval."""

    reference: str
    weight: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class AmbiguousGroup:
    """References too collinear (delta cosine >= 0.9) to split; their combined weight is sound."""

    references: tuple[str, ...]
    weight: float
    ci95: tuple[float, float]
    cosine: float


@dataclass(frozen=True)
class BlockFit:
    """The chosen ingredients refitted on one block (or one component).

    ``weights`` holds every ingredient, the pivot included; a weight is ``None`` where the
    reference does not differ from the pivot in this block, so its share cannot be seen.
    """

    block: str
    weights: tuple[tuple[str, float | None, tuple[float, float] | None], ...]
    unexplained: float | None
    copy_of: str | None = None


@dataclass(frozen=True)
class LoraFinding:
    """A LoRA baked into the target: a known one (reference, strength) or an unknown one (rank)."""

    reference: str | None
    strength: float | None
    ci95: tuple[float, float] | None
    rank: int | None
    layers: tuple[str, ...]


@dataclass(frozen=True)
class ElementwiseFinding:
    """What the exact coordinate samples say about TIES / DARE (see :mod:`sdforensics.recipe.nonlinear`)."""

    kind: str  # "linear" | "ties" | "dare" | "dare_ties"
    ingredients: tuple[str, ...]
    density: float | None  # TIES k: share of each delta kept
    drop_rate: float | None  # DARE p
    scale: float | None  # TIES alpha (merge strength), when measurable
    equal_fraction: float  # share of moved coordinates left exactly at the base
    magnitude_auc: float  # 1.0: only small deltas were dropped (TIES); 0.5: random (DARE)
    n_samples: int
    sign_vote: str | None = None  # TIES sign election: "count" (sd-mecha's default) or "magnitude" (the paper's)


@dataclass(frozen=True)
class MethodFinding:
    """The merge method (or family) recognised behind a recipe (see :mod:`sdforensics.recipe.methods`).

    ``unexplained`` is the share left under this method's own model (None when the method is the
    linear fit itself); ``alternatives`` are methods that give the same result on these models.
    """

    name: str  # "weighted_sum" | "n_average" | "model_stock" | "add_difference" | "train_difference" | "cosine"
    #            | "ties" | "dare" | "dare_ties" | "per_tensor_weights" | "unknown"
    family: str  # "interpolation" | "sum_twice/triple_sum" | "add_difference" | "model_stock" | "elementwise" | ...
    parameters: tuple[tuple[str, float], ...]
    ingredients: tuple[str, ...]
    unexplained: float | None
    alternatives: tuple[str, ...] = ()
    note: str = ""


LEFT_OUT_OF_FIT = "left out of the recipe fit"
"""How a note that tells which layers the recipe fit could not use ends (the summary shows such notes)."""


@dataclass(frozen=True)
class SuperMergerWeights:
    """Per-block alpha that reproduces a block-weighted merge in SuperMerger / sd-mecha.

    ``formula`` is ``"(1-alpha) x A + alpha x B"`` or ``"A + alpha x (B - C)"``; ``text`` is the
    comma list users paste (order ``blocks``); ``undetermined`` lists blocks where the
    references do not differ, filled with the global alpha.
    """

    formula: str
    models: tuple[str, ...]
    blocks: tuple[str, ...]
    alphas: tuple[float, ...]
    text: str
    undetermined: tuple[str, ...]


@dataclass(frozen=True)
class RecipeEstimate:
    """The whole estimate. ``weights`` lists the ingredients (pivot included when it is one)."""

    kind: str
    pivot: str
    base: str | None
    weights: tuple[Weight, ...]
    unexplained: float
    blocks: tuple[BlockFit, ...]
    components: tuple[BlockFit, ...]
    ambiguous: tuple[AmbiguousGroup, ...] = ()
    loras: tuple[LoraFinding, ...] = ()
    elementwise: ElementwiseFinding | None = None
    supermerger: SuperMergerWeights | None = None
    copy_of: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    method: MethodFinding | None = None
    """The merge method recognised, with its parameters (issue 19)."""
    linear_unexplained: float | None = None
    """What the linear (global or per-block) fit leaves, when ``unexplained`` is measured under a
    recognised non-linear method instead."""
    block_convention: str = BLOCK_CONVENTION
    """How ``blocks`` are numbered (set from the architecture's block map by the caller)."""
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Ingredient -> the other library references that are the same model (copies, re-saves in
    another precision, renamed files): one of them entered the fit, all are named."""

    def weight_of(self, reference: str) -> float:
        """Affine weight of ``reference`` (0.0 when it is not an ingredient)."""
        for w in self.weights:
            if w.reference == reference:
                return w.weight
        return 0.0
