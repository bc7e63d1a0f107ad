"""Parity check for refactors (issue 16): ``sdf analyze --format json`` on fixed cases, written to a folder.

    python bench/parity.py OUT            # builds models under OUT/build, JSON under OUT/json
    python bench/parity.py OUT --compare OTHER   # and diff OUT/json against OTHER/json

Cases (small width, built with ``sdforensics.synth``, analysed against libraries built here):
the demo mix (``sdf demo``'s 0.5 ft1 + 0.3 ft2 + 0.2 ft3), a block merge, a fine-tune of a
library model (issue 15 item 10), a DARE merge of library models (item 11), a ``.ckpt``, a
diffusers folder, an SDXL mix, a real LoRA file and a LoRA baked into a model (when
``../shared/realdata`` is beside the checkout).

Fields that vary from run to run and are left out of the comparison: none of the JSON fields
vary between runs when OUT is the same folder (paths include OUT, so compare runs made at the
same OUT, or pass ``--compare`` which ignores path strings under each run's own OUT).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"
CAT = REAL / "catundchat-stable-diffusion-v1.5-lora" / "pytorch_lora_weights.safetensors"


def _synth():  # noqa: ANN202 - the module; synth moves between layouts
    try:
        import sdforensics.synth.specs as s  # type: ignore[import-not-found]
    except ImportError:
        import sdforensics.synth as s  # type: ignore[no-redef]
    return s


def build(out: Path) -> dict[str, tuple[Path, Path]]:
    """Models and libraries: {case: (model path, library folder)}."""
    s = _synth()
    models, libs = out / "models", out / "libs"
    cases: dict[str, tuple[Path, Path]] = {}

    def library(name: str, refs: dict[str, Path], base: str) -> Path:
        lib = libs / name
        if not lib.exists():
            for ref, path in refs.items():
                args = ["refs", "add", str(path), "--name", ref, "--library", str(lib)]
                if ref == base:
                    args.append("--official")
                _sdf(args)
        return lib

    # sd1 family as sdf demo makes it (width 16, seed 7, 4 fine-tunes)
    specs = s.family_specs("sd1", width=16, finetunes=4, seed=7)
    paths = {n: s.write_safetensors(sp, models / f"sd1-{n}.safetensors") for n, sp in specs.items()}
    lib1 = library("sd1", {("sd15-base" if n == "base" else n): p for n, p in paths.items()}, "sd15-base")
    mix = s.Merge(((0.5, specs["ft1"]), (0.3, specs["ft2"]), (0.2, specs["ft3"])))
    cases["demo_mix"] = (s.write_safetensors(mix, models / "mystery-mix.safetensors"), lib1)
    try:
        from sdforensics.model.architecture import block_maps
    except ImportError:
        block_maps = s.block_maps
    ids = block_maps()["sd1"].ids
    blocks = {b: ((1.0, 0.0) if i % 2 else (0.2, 0.8)) for i, b in enumerate(ids)}
    block = s.Merge(((0.5, specs["ft1"]), (0.5, specs["ft2"])), blocks=blocks)
    cases["block_merge"] = (s.write_safetensors(block, models / "block-merge.safetensors"), lib1)
    tuned = s.FineTune(specs["ft1"], seed=991, scale=0.03)
    cases["finetune_of_ft1"] = (s.write_safetensors(tuned, models / "ft1-tuned.safetensors"), lib1)
    cases["dare_merge"] = (s.write_safetensors(Dare(specs["base"], (specs["ft1"], specs["ft2"]), 0.9, (1.0, 1.0)),
                                               models / "dare.safetensors"), lib1)
    ck = s.Merge(((0.7, specs["ft2"]), (0.3, specs["ft3"])))
    cases["ckpt"] = (s.write_ckpt(ck, models / "mix.ckpt"), lib1)
    diff = s.Merge(((0.6, specs["ft1"]), (0.4, specs["ft4"])))
    folder = models / "mix-diffusers"
    if not folder.exists():
        s.write_diffusers(diff, folder)
    cases["diffusers"] = (folder, lib1)
    # SDXL at 1/32 width
    xl = s.family_specs("sdxl", width=32, finetunes=3, seed=5)
    xp = {n: s.write_safetensors(sp, models / f"sdxl-{n}.safetensors") for n, sp in xl.items()}
    libx = library("sdxl", {("sdxl-base" if n == "base" else n): p for n, p in xp.items()}, "sdxl-base")
    xmix = s.Merge(((0.6, xl["ft1"]), (0.4, xl["ft2"])))
    cases["sdxl_mix"] = (s.write_safetensors(xmix, models / "sdxl-mix.safetensors"), libx)
    if CAT.exists():
        cases["lora_file"] = (CAT, lib1)
        cases.update(_baked(s, models, libs))
    return cases


class Dare:
    """base + sum_i w_i * DARE(ft_i - base, p): each delta element kept with probability 1 - p, / (1 - p)."""

    def __new__(cls, base, fts, p, weights):  # noqa: ANN001, ANN204
        s = _synth()

        class _Dare(s.Spec):
            family, width = base.family, base.width

            def layout(self):  # noqa: ANN202
                return base.layout()

            def tensor(self, key: str) -> torch.Tensor:
                b = base.tensor(key)
                if not b.is_floating_point():
                    return b
                out = b.double()
                for i, (w, ft) in enumerate(zip(weights, fts, strict=True)):
                    g = torch.Generator().manual_seed(s._seed("dare", key, i))
                    keep = (torch.rand(b.shape, generator=g) >= p).double()
                    out = out + w * keep * (ft.tensor(key).double() - b.double()) / (1 - p)
                return out.float()

        return _Dare()


def _baked(s, models: Path, libs: Path) -> dict[str, tuple[Path, Path]]:  # noqa: ANN001
    """A real LoRA baked at 0.8 into a full-width base (24 of its layers written, as tests/lora/test_lora_cli.py)."""
    try:
        from sdforensics.lora.files import read_lora  # type: ignore[import-not-found]
    except ImportError:
        from sdforensics.lora import read_lora  # type: ignore[no-redef]
    try:
        from sdforensics.synth.lora_bake import Baked  # type: ignore[import-not-found]
    except ImportError:
        try:
            from sdforensics.lora.fingerprint import Baked  # type: ignore[import-not-found,no-redef]
        except ImportError:
            from sdforensics.lora_bake import Baked  # type: ignore[no-redef]
    lora = read_lora(CAT)
    keep = set(sorted(lora.targets())[:24])
    base = s.Base("sd1", width=1, seed=4)
    b = s.write_safetensors(base, models / "lbase.safetensors", keys=lambda k: k if k in keep else None)
    m = s.write_safetensors(Baked(base, lora, 0.8), models / "baked.safetensors",
                            keys=lambda k: k if k in keep else None)
    lib = libs / "lora"
    if not lib.exists():
        _sdf(["refs", "add", str(b), "--name", "base", "--official", "--library", str(lib)])
        _sdf(["refs", "add", str(CAT), "--name", "cat-lora", "--library", str(lib)])
    return {"baked_lora": (m, lib)}


def _sdf(args: list[str]) -> str:
    res = subprocess.run([sys.executable, "-m", "sdforensics.cli", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"sdf {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def diff(a: object, b: object, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k in b else 'before'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items -> {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--build", type=Path, default=None, help="reuse models/libraries from here (default OUT/build)")
    ap.add_argument("--compare", type=Path, default=None, help="another run's OUT: print the differences")
    args = ap.parse_args()
    build_dir = args.build or args.out / "build"
    cases = build(build_dir)
    (args.out / "json").mkdir(parents=True, exist_ok=True)
    for name, (model, lib) in cases.items():
        text = _sdf(["analyze", str(model), "--library", str(lib), "--format", "json", "-q"])
        (args.out / "json" / f"{name}.json").write_text(text)
        print(f"{name}: {len(text):,} characters", flush=True)
    if args.compare:
        total = 0
        for f in sorted((args.out / "json").glob("*.json")):
            other = args.compare / "json" / f.name
            lines = diff(json.loads(other.read_text()), json.loads(f.read_text()))
            total += len(lines)
            print(f"== {f.stem}: {len(lines)} differences")
            for line in lines[:40]:
                print("  " + line)
        print(f"total differences: {total}")


if __name__ == "__main__":
    main()
