#!/usr/bin/env bash
# Smoke test of a BUILT package: install the wheel into a fresh venv and run every user command
# from a folder outside the checkout, so a file the wheel fails to carry (the registry, a data
# table) fails CI. Also checks the sdist carries the registry source.
#   .ci/smoke_wheel.sh DIST_DIR        (DIST_DIR holds one sdforensics-*.whl and one .tar.gz)
set -euo pipefail
dist=$(cd "$1" && pwd)
wheel=$(ls "$dist"/sdforensics-*.whl)
sdist=$(ls "$dist"/sdforensics-*.tar.gz)
work=$(mktemp -d /tmp/sdf-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

# the sdist carries the registry (the wheel build copies it into the package)
listing=$(tar tzf "$sdist")  # whole listing first: grep -q closing a pipe early trips pipefail
for f in reference_hashes/known_models.json reference_hashes/MANIFEST.sha256 setup.py; do
    grep -q "^sdforensics-[^/]*/$f\$" <<< "$listing" || fail "sdist lacks $f"
done

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
pip install -q torch==2.13.0
pip install -q "$wheel"
cd "$work"  # outside the checkout: nothing can be found beside the sources
export SDF_HOME="$work/home"
python - <<'PY' || fail "the package imports from the checkout, not from the wheel"
import sdforensics, sys
from sdforensics.library.shipped import shipped_registry_dir
print("smoke: package", sdforensics.__file__, "registry", shipped_registry_dir())
assert "site-packages" in sdforensics.__file__, sdforensics.__file__
assert (shipped_registry_dir() / "known_models.json").is_file()
PY

want=$(python -c "import sdforensics; print(sdforensics.__version__)")
[ "$(sdf --version)" = "sdforensics $want" ] || fail "sdf --version says '$(sdf --version)'"
sdf -h | grep -q "analyze" || fail "sdf -h"

sdf synth family fam --width 16 -q > synth.txt
grep -q "fam/base.safetensors" synth.txt || fail "synth family did not list fam/base.safetensors"
sdf synth merge mix.safetensors --width 16 --recipe ft1:0.6,ft2:0.4 -q > /dev/null
sdf refs add fam/base.safetensors --name sd15-base --official --library lib -q
sdf refs add fam/ft1.safetensors --name ft1 --library lib -q
sdf refs add fam/ft2.safetensors --name ft2 --library lib -q
sdf refs add fam/ft3.safetensors --name ft3 --library lib -q

sdf analyze mix.safetensors --library lib -q > report.txt
grep -q "Recipe: 0.6 x ft1 + 0.4 x ft2" report.txt || { cat report.txt; fail "text recipe"; }
sdf analyze mix.safetensors --library lib -q -f json > report.json
python - <<'PY' || fail "json report"
import json
doc = json.load(open("report.json"))
assert doc["schema"] == "sdforensics.analysis/1", doc["schema"]
names = {c["reference"]: round(c["weight"], 2) for c in doc["recipe"]["components"]}
assert names == {"ft1": 0.6, "ft2": 0.4}, names
PY
sdf analyze mix.safetensors --library lib -q -f html -o report.html
head -c 15 report.html | grep -qi "<!doctype html" || fail "html report"
grep -q "ft1" report.html || fail "html report names no reference"
# the default search path: shipped registry (package data) + user library; hashes only, no library
sdf analyze fam/ft1.safetensors -q > default.txt 2> default.err || { cat default.err; fail "analyze with the shipped registry"; }
sdf analyze fam/ft1.safetensors --identity -q -f json | python -c "import json,sys; json.load(sys.stdin)" \
    || fail "identity json"

sdf scan fam/base.safetensors > scan.txt || fail "scan exit code"
grep -qi "clean\|safe" scan.txt || { cat scan.txt; fail "scan verdict"; }
sdf scan fam/base.safetensors -f json | python -c "import json,sys; json.load(sys.stdin)" || fail "scan json"

sdf refs list --library lib > list.txt
for n in sd15-base ft1 ft2 ft3; do grep -q "$n" list.txt || fail "refs list lacks $n"; done
sdf refs list --registry | tail -1 | grep -q "known by hash only" || fail "refs list --registry"
sdf refs list -f json --registry | python -c "
import json, sys
rows = json.load(sys.stdin)['references']
assert sum(1 for r in rows if not r['fingerprint']) > 200, len(rows)" || fail "registry entries missing from the wheel"
sdf refs verify -q || fail "the installed registry does not match its MANIFEST.sha256"
sdf demo --out demo -q > demo.txt
grep -q "sdf analyze demo/mystery-mix.safetensors --library demo/library" demo.txt || fail "demo next steps"
echo "smoke: wheel $(basename "$wheel") OK (every command ran from $work)"
