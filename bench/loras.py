"""Issue 5, LoRA part: real SD1.5 LoRAs baked into a full-size base at strengths 0.3 to 1.2.

    python bench/loras.py [--out bench/out/loras] [--subset]

For each real SD1.5 LoRA in ../shared/realdata (catundchat's diffusers LoRA, cloneofsimo's
rank-4 SVD-distilled and rank-1 Disney LoRAs, their UNet and text-encoder layers together) and
each strength, a model = base + strength x LoRA is written and analysed twice:

* with the LoRA in the library (``sdf refs add lora.safetensors``): the estimated strength must be
  within +-0.05;
* without it: an unknown baked LoRA must be reported with its rank within +-1 and the touched
  layers listed (share of the true layers found is printed).

The base is a full-size synthetic SD1.5 (fp16). ``--subset`` writes only the layers the LoRAs touch
(full-size shapes; every other tensor is left out of the files, which is much faster); the default
writes complete 2.1 GB checkpoints. Prints one table and PASS/FAIL per figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "realdata"
LORAS = {
    "catundchat": REAL / "catundchat-stable-diffusion-v1.5-lora" / "pytorch_lora_weights.safetensors",
    "analog_svd_rank4": REAL / "cloneofsimo-lora" / "analog_svd_rank4.safetensors",
    "disney_rank1": REAL / "cloneofsimo-lora" / "lora_disney.safetensors",
}
STRENGTHS = (0.3, 0.6, 0.9, 1.2)


def sdf(*args: object) -> str:
    out = subprocess.run([sys.executable, "-m", "sdforensics.cli", *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sdf {' '.join(map(str, args))} failed: {out.stderr.strip()}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "loras")
    ap.add_argument("--subset", action="store_true")
    ap.add_argument("--strengths", default=",".join(map(str, STRENGTHS)))
    args = ap.parse_args()
    from sdforensics import read_lora
    from sdforensics.synth.lora_bake import Baked
    from sdforensics.synth.specs import Base, write_safetensors

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    loras = {name: read_lora(path) for name, path in LORAS.items()}
    touched = set().union(*(set(lo.targets()) for lo in loras.values()))
    keep = (lambda k: k if k in touched else None) if args.subset else None
    base = Base("sd1", width=1, seed=21)
    t0 = time.perf_counter()
    base_path = write_safetensors(base, out / "base.safetensors", keys=keep)
    with_lib, without_lib = out / "lib-with", out / "lib-without"
    for lib in (with_lib, without_lib):
        sdf("refs", "add", base_path, "--name", "sd15-base", "--official", "--library", lib, "-q", "--device", "cpu")
    for name, path in LORAS.items():
        sdf("refs", "add", path, "--name", name, "--library", with_lib, "-q", "--device", "cpu")
    rows = []
    for name, lora in loras.items():
        true_layers = set(lora.targets())
        for strength in map(float, args.strengths.split(",")):
            model = write_safetensors(Baked(base, lora, strength), out / f"{name}-{strength}.safetensors", keys=keep)
            known = json.loads(sdf("analyze", model, "--library", with_lib, "-f", "json", "-q", "--device", "cpu"))
            unknown = json.loads(sdf("analyze", model, "--library", without_lib, "-f", "json", "-q", "--device", "cpu"))
            kl = [x for x in known["recipe"]["loras"] if x["reference"] == name]
            est = kl[0]["strength"] if kl else None
            ul = [x for x in unknown["recipe"]["loras"] if x["reference"] is None]
            rank = ul[0]["rank"] if ul else None
            found = set(ul[0]["layers"]) if ul else set()
            rows.append({
                "lora": name, "rank": lora.rank, "strength": strength, "estimated": est,
                "kind_known": known["recipe"]["kind"], "strength_ok": est is not None and abs(est - strength) <= 0.05,
                "detected_unknown": bool(ul), "rank_found": rank,
                "rank_ok": rank is not None and abs(rank - lora.rank) <= 1,
                "layers_found": len(found & true_layers), "layers_true": len(true_layers),
                "false_layers": len(found - true_layers),
                "kind_unknown": unknown["recipe"]["kind"], "unexplained_unknown": unknown["recipe"]["unexplained"],
            })
            model.unlink()
    print(f"\nbase: full-size synthetic SD1.5 fp16 ({'LoRA-touched layers only' if args.subset else 'complete file'}); "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print("| LoRA | rank | strength | in library: estimated (kind) | not in library: kind, rank, layers found/true (false) |")
    print("|---|---|---|---|---|")
    for r in rows:
        est = "none" if r["estimated"] is None else f"{r['estimated']:.3f}"
        print(f"| {r['lora']} | {r['rank']} | {r['strength']:.1f} | {est} ({r['kind_known']}) | {r['kind_unknown']}, "
              f"{r['rank_found']}, {r['layers_found']}/{r['layers_true']} ({r['false_layers']}) |")
    n = len(rows)
    print(f"\ndetected in every case (library): {sum(r['kind_known'] == 'lora' for r in rows)}/{n}")
    print(f"strength within +-0.05 (library): {sum(r['strength_ok'] for r in rows)}/{n} "
          f"{'PASS' if all(r['strength_ok'] for r in rows) else 'FAIL'}")
    print(f"unknown LoRA detected: {sum(r['detected_unknown'] for r in rows)}/{n} "
          f"{'PASS' if all(r['detected_unknown'] for r in rows) else 'FAIL'}")
    print(f"rank within +-1 (not in library): {sum(r['rank_ok'] for r in rows)}/{n} "
          f"{'PASS' if all(r['rank_ok'] for r in rows) else 'FAIL'}")
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
