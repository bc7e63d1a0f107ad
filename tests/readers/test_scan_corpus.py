"""The scan corpus (``tests/scan_corpus.py``) through ``sdf scan``'s exit code.

Whether each file runs code under ``torch.load(weights_only=False)`` is checked, in one
subprocess that loads every file in the corpus folder (payloads only create a marker file
there). Required: a file that runs code exits non-zero; every other hostile file exits
non-zero too (it cannot be shown safe); every legitimate file exits 0 and runs nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scan_corpus import CORPUS, write_corpus

from sdforensics.readers.scan import exit_code, scan_path

HERE = Path(__file__).resolve().parents[1]  # tests/, where scan_corpus.py lives


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, bool]]:
    folder = tmp_path_factory.mktemp("corpus")
    files = write_corpus(folder)
    manifest = [{"name": it.name, "suffix": it.suffix} for it in CORPUS]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, str(HERE / "scan_corpus.py"), "--check", str(folder)],
                          capture_output=True, text=True, timeout=300, check=True)
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    return files, runs


def test_the_corpus_holds_code_running_and_legitimate_files(corpus) -> None:  # type: ignore[no-untyped-def]
    _, runs = corpus
    assert sum(runs.values()) >= 60
    assert sum(it.legit for it in CORPUS) >= 10
    stated = {it.name: it.runs for it in CORPUS if it.runs is not None}
    assert {n: runs[n] for n in stated} == stated  # what each class is said to do is what it did


def test_scan_exit_codes_over_the_corpus(corpus) -> None:  # type: ignore[no-untyped-def]
    files, runs = corpus
    missed, false_pos, hostile_zero = [], [], []
    for it in CORPUS:
        report = scan_path(files[it.name])
        code = exit_code(report)
        if runs[it.name] and code == 0:
            missed.append(it.name)
        if it.legit and (code != 0 or runs[it.name]):
            false_pos.append((it.name, report.files[0].findings, report.files[0].incomplete))
        if not it.legit and code == 0:
            hostile_zero.append(it.name)
    assert missed == [], "files that run code but scan clean"
    assert false_pos == [], "legitimate files flagged"
    assert hostile_zero == [], "hostile files that scan clean"
