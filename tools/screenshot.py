"""Screenshot an HTML report with headless Chromium and collect its console messages.

    python tools/screenshot.py report.html shot.png            # any report
    python tools/screenshot.py --demo docs/report.png          # the demo mix (docs/report.png)

Chromium is found as ``$SDF_CHROMIUM`` or the first of ``chromium``, ``chromium-browser``,
``google-chrome`` on PATH (Debian: ``apt-get install chromium``). Console messages come from
``--enable-logging=stderr --v=0``: every ``CONSOLE`` line (our reports carry no script, so any
message at all is a failure) and every ``Uncaught`` error. Used by ``tests/report/test_report.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
_CONSOLE = re.compile(r"CONSOLE|Uncaught")


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None when there is none."""
    env = os.environ.get("SDF_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4000, timeout: float = 90.0,
               chromium: str | None = None) -> list[str]:
    """Render ``html`` into ``png``; returns the console lines (errors) Chromium logged."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary: install Debian's 'chromium' or set SDF_CHROMIUM")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdf-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", Path(html).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return [line for line in proc.stderr.splitlines() if _CONSOLE.search(line)]


def crop(png: Path, margin: int = 24, palette: bool = True) -> None:
    """Cut the blank area below the content; optionally quantize (smaller docs images)."""
    from PIL import Image, ImageChops

    im = Image.open(png).convert("RGB")
    bg = Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1)))
    box = ImageChops.difference(im, bg).getbbox()
    if box:
        im = im.crop((0, 0, im.width, min(im.height, box[3] + margin)))
    if palette:
        im = im.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im.save(png, optimize=True)


def demo_report(folder: Path) -> Path:
    """Build the demo family and mix in ``folder`` and write its HTML report."""
    from sdforensics.api import analyze
    from sdforensics.demo import run_demo
    from sdforensics.report.render_html import analysis_to_html

    run_demo(folder, log=lambda _: None)
    a = analyze(folder / "mystery-mix.safetensors", library=folder / "library", device="cpu")
    out = folder / "report.html"
    out.write_text(analysis_to_html(a), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="REPORT.html SHOT.png, or SHOT.png with --demo")
    p.add_argument("--demo", action="store_true", help="render the demo mix's report")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=4000)
    p.add_argument("--no-crop", action="store_true")
    args = p.parse_args(argv)
    if len(args.paths) != (1 if args.demo else 2):
        p.error("give REPORT.html SHOT.png, or --demo SHOT.png")
    png = args.paths[-1]
    with tempfile.TemporaryDirectory(prefix="sdf-demo-") as tmp:
        html = demo_report(Path(tmp)) if args.demo else args.paths[0]
        errors = screenshot(html, png, args.width, args.height)
    if not args.no_crop:
        crop(png)
    for line in errors:
        print(f"console: {line}", file=sys.stderr)
    print(f"{png}: {png.stat().st_size:,} bytes")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
