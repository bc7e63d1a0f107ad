"""Lines of code per subpackage and the longest functions (issue 16's layout figures).

    python bench/codesize.py [--top N]
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sdforensics"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    per: Counter[str] = Counter()
    funcs: list[tuple[int, str]] = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG)
        group = rel.parts[0] if len(rel.parts) > 1 else "(top level)"
        text = f.read_text("utf-8")
        per[group] += sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                funcs.append((n, f"{rel}:{node.name}"))
    for group, n in sorted(per.items()):
        print(f"{group:14s} {n:6d}")
    print(f"{'total':14s} {sum(per.values()):6d}  (non-blank, non-comment lines)")
    for n, name in sorted(funcs, reverse=True)[: args.top]:
        print(f"{n:4d} lines  {name}")


if __name__ == "__main__":
    main()
