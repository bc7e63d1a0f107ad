"""Full-size SD1.5, SD2.1 and SDXL files: identified with their components, and the same weights
as safetensors, .ckpt and a diffusers folder give the same canonical keys and content hashes.

    python bench/formats.py [--families sd1,sd2,sdxl] [--out bench/out] [--keep]

Each family's base is written at full size (fp16; SDXL is 6.9 GB), analysed with
``sdf analyze --identity``, then re-written as a torch zip ``.ckpt`` and as a diffusers folder and
analysed again. Prints one table.
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


def analyze(path: Path) -> tuple[dict, float]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sdforensics.cli", "analyze", str(path), "--identity", "-q", "-f", "json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout), time.perf_counter() - t


def canonical_keys(path: Path) -> list[str]:
    import sdforensics

    with sdforensics.open_checkpoint(path) as ckpt:
        return sorted(i.name for i in sdforensics.read_layout(ckpt).infos)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="sd1,sd2,sdxl")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--keep", action="store_true", help="keep the .ckpt and diffusers copies")
    args = ap.parse_args()
    from sdforensics.synth.specs import Base, write_ckpt, write_diffusers, write_safetensors

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for family in args.families.split(","):
        spec = Base(family, width=1, seed=11)
        st = args.out / f"{family}-base.safetensors"
        if not st.exists():
            write_safetensors(spec, st)
        ck = args.out / f"{family}-base.ckpt"
        df = args.out / f"{family}-base-diffusers"
        shutil.rmtree(df, ignore_errors=True)
        write_ckpt(spec, ck)
        write_diffusers(spec, df)
        docs = {}
        for label, path in (("safetensors", st), ("ckpt", ck), ("diffusers", df)):
            doc, dt = analyze(path)
            docs[label] = doc
            a = doc["architecture"]
            rows.append((family, label, a["family"], a["name"], ",".join(a["components"]),
                         ",".join(a["text_encoders"]), doc["tensors"]["count"], dt,
                         " ".join(f"{k}:{v[:8]}" for k, v in sorted(doc["content_hashes"].items()))))
        keys = {label: canonical_keys(p) for label, p in (("safetensors", st), ("ckpt", ck), ("diffusers", df))}
        same_hashes = len({json.dumps(d["content_hashes"], sort_keys=True) for d in docs.values()}) == 1
        dropped = sorted(set(keys["safetensors"]) - set(keys["diffusers"]))
        rows.append((family, "check", "", "", "", "", 0, 0.0,
                     f"content hashes equal: {same_hashes}; ckpt keys == safetensors keys: "
                     f"{keys['ckpt'] == keys['safetensors']}; diffusers drops {len(dropped)} key(s) "
                     f"{', '.join(k.rsplit('.', 2)[-2] + '.' + k.rsplit('.', 1)[-1] for k in dropped[:3])}"))
        if not args.keep:
            ck.unlink()
            shutil.rmtree(df)
    print(f"| {'family':6} | {'format':11} | {'detected':8} | {'arch':6} | {'components':24} | {'text encoders':20} "
          f"| {'tensors':7} | {'s':6} | content hashes / checks |")
    for r in rows:
        print(f"| {r[0]:6} | {r[1]:11} | {r[2]:8} | {r[3]:6} | {r[4]:24} | {r[5]:20} | {r[6]:7} | {r[7]:6.1f} | {r[8]} |")


if __name__ == "__main__":
    main()
