"""Official models: recognise the ones a user has downloaded, and download them when a network exists.

* :func:`find_official_files` walks a folder and returns the files whose SHA-256 is that of an
  official registry entry (SD 1.4/1.5/2.0/2.1, SDXL base/refiner releases).
* :func:`download_official` fetches one URL into a temporary file next to the destination,
  checks size and SHA-256 against the entry, and renames it into place only when both agree.
* :func:`official_urls` derives Hugging Face download URLs from an entry's ``source``.

URL rule (:func:`official_urls`): ``source`` is split into its ``; ``-separated parts and each
part that *states where the file is published* on Hugging Face gives a repository and a path:

* a Git LFS pointer of a git copy, ``github:<o>/<r> <path> (Git LFS pointer ...) @ <commit>
  [git copy of [the] HF <repo> ...]`` (or ``[LFS pointers of <repo> files]``; a ``Duplicate
  from <repo>`` in the same part adds that repository too): ``<path>`` in ``<repo>``;
* ``same oid[/size] as <path> in github:... (git copy of HF <repo> ...)``: ``<path>`` in ``<repo>``;
* a part that starts ``HF <repo> [<path>]``, or ``(HF <repo> [<path>], same hash)``, or
  ``(URL <repo>)``: ``<path>``, else the entry's ``file``, in ``<repo>``;
* ``(URL <repo>/resolve/<rev>/<path>)``: that URL as given.

Each gives ``https://huggingface.co/<repo>/resolve/main/<path>``, in the order the source names
them, then (optional field) ``hf_repo`` first of all. Repositories that moved
(:data:`HF_MOVED`) add their new home after the original. Mentions in passing ("copy of the HF
X model card") give nothing, and no URL is invented when no part says where the file is. A
file that Hugging Face later replaced under the same name (e.g. the Dec 2022 SD 1.5
safetensors) will not match at ``main`` and is refused by the hash check, never installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdforensics.core.errors import LibraryError
from sdforensics.library.manifest import CHUNK, sha256_file
from sdforensics.library.registry import KnownModel, Registry

Progress = Callable[[int, "int | None"], None]
"""``progress(bytes_done, bytes_total_or_None)``, called after every chunk."""

MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
"""Files hashed when an official entry's size is unknown (their size cannot rule them out)."""

HF_MOVED = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
}
"""Hugging Face repositories that were removed, and the mirror that now holds the same files."""

_REPO = r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
_PATH = r"([^\s,;()\[\]]+)"
# (pattern, group holding the path or 0 for the entry's file); group 1 is always the repository.
_PART_RULES: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"^github:\S+ " + _PATH.replace("(", "(?P<path>", 1) + r" \(Git LFS pointer[^)]*\) @ \S+ "
                r"\[(?:git copy of (?:the )?HF|LFS pointers of) " + _REPO), -1),
    (re.compile(r"\bDuplicate from " + _REPO), -2),
    (re.compile(r"^same oid(?:/size)? as " + _PATH.replace("(", "(?P<path>", 1) +
                r" in github:\S+ \(git copy of (?:the )?HF " + _REPO), -1),
    (re.compile(r"^HF " + _REPO + r"(?: " + _PATH + r")?\s*$"), 2),
    (re.compile(r"\(HF " + _REPO + r"(?: " + _PATH + r")?(?: copy)?, same hash\)"), 2),
    (re.compile(r"\(URL " + _REPO + r"\)"), 0),
)
_URL_AS_GIVEN = re.compile(r"\(URL " + _REPO + r"(/resolve/[^\s;,()]+)\)")
_SCHEMES = ("https", "http", "file")


def find_official_files(folder: Path, registry: Registry, *, official_only: bool = True,
                        progress: Callable[[Path], None] | None = None) -> list[tuple[Path, KnownModel]]:
    """Files under ``folder`` (recursively) whose SHA-256 is an official registry entry's.

    A file is hashed (streaming, 16 MiB chunks) only if its size equals a candidate's known
    ``bytes``, or some candidate's size is unknown and the file has a model suffix
    (:data:`MODEL_SUFFIXES`). ``official_only=False`` recognises every entry with a SHA-256.
    ``progress(path)`` is called before each file is hashed. Results are sorted by path.

    >>> import tempfile
    >>> find_official_files(Path(tempfile.mkdtemp()), Registry([]))
    []
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LibraryError(f"{folder}: not a folder. Give the folder that holds the downloaded models.")
    candidates = [e for e in registry.entries if e.sha256 and (e.official or not official_only)]
    if not candidates:
        return []
    sizes = {e.bytes for e in candidates if e.bytes is not None}
    any_unknown_size = any(e.bytes is None for e in candidates)
    found: list[tuple[Path, KnownModel]] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                if not path.is_file():
                    continue
                size = path.stat().st_size
            except OSError:
                continue
            if size not in sizes and not (any_unknown_size and path.suffix.lower() in MODEL_SUFFIXES):
                continue
            if progress:
                progress(path)
            try:
                digest = sha256_file(path)
            except OSError as err:
                raise LibraryError(f"{path}: cannot be read ({err}).") from err
            entry = registry.by_sha256(digest)
            if (entry is not None and (entry.official or not official_only)
                    and (entry.bytes is None or entry.bytes == size)):
                found.append((path, entry))
    return sorted(found, key=lambda pe: str(pe[0]))


def official_urls(entry: KnownModel) -> list[str]:
    """Candidate download URLs for ``entry``, best first (see the module docstring for the rule).

    >>> e = KnownModel("SD 1.4", "sd1", "checkpoint", "sd-v1-4.ckpt", None, "0" * 64, None, None,
    ...     "github:x/y sd-v1-4.ckpt (Git LFS pointer oid+size) @ a39890b9c7 "
    ...     "[LFS pointers of CompVis/stable-diffusion-v-1-4-original files]")
    >>> official_urls(e)
    ['https://huggingface.co/CompVis/stable-diffusion-v-1-4-original/resolve/main/sd-v1-4.ckpt']
    """
    urls: list[str] = []

    def add(repo: str, path: str | None) -> None:
        if not path:
            return
        for name in (repo, HF_MOVED.get(repo)):
            url = f"https://huggingface.co/{name}/resolve/main/{urllib.parse.quote(path)}" if name else None
            if url and url not in urls:
                urls.append(url)

    if entry.hf_repo:
        add(entry.hf_repo, entry.file)
    for part in entry.source.split("; "):
        given = _URL_AS_GIVEN.search(part)
        if given:
            url = f"https://huggingface.co/{given.group(1)}{given.group(2)}"
            if url not in urls:
                urls.append(url)
            continue
        part_path: str | None = None
        for pattern, path_group in _PART_RULES:
            m = pattern.search(part)
            if not m:
                continue
            if path_group == -1:
                part_path = m.group("path")
                add(m.group(2), part_path)
            elif path_group == -2:
                add(m.group(1), part_path)
            else:
                path = m.group(path_group) if path_group else None
                add(m.group(1), path if path and path != "copy" else entry.file)
    return urls


def _target(entry: KnownModel, url: str, dest: Path) -> Path:
    if dest.is_dir():
        name = Path(entry.file).name if entry.file else Path(urllib.parse.urlparse(url).path).name
        if not name:
            raise LibraryError(f"{url}: cannot tell a file name for {entry.name!r}; "
                               "give dest as a file path.")
        return dest / name
    return dest


def _open(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "sdforensics"})
    host = urllib.parse.urlparse(url).hostname or ""
    token = os.environ.get("HF_TOKEN")
    if token and (host == "huggingface.co" or host.endswith(".huggingface.co")):
        request.add_header("Authorization", f"Bearer {token}")  # gated repos (SDXL 0.9, SD3)
    return urllib.request.urlopen(request, timeout=timeout)


def download_official(entry: KnownModel, url: str, dest: Path, progress: Progress | None = None,
                      *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (a file path, or a folder: then ``entry.file``'s name) and verify it.

    Streams into a temporary file in the destination's folder, hashing as it goes; the file is
    renamed into place only when its size and SHA-256 equal the entry's. On any mismatch or
    error the temporary file is deleted and :class:`LibraryError` says expected vs got. An
    existing destination with the right hash is returned as is; one with another hash is left
    alone and refused. Set ``HF_TOKEN`` for gated Hugging Face repositories.
    """
    if not entry.sha256:
        raise LibraryError(f"{entry.name!r} has no SHA-256 in the registry, so a download could not be "
                           "verified; refusing to download it.")
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in _SCHEMES:
        raise LibraryError(f"{url}: unsupported URL scheme {scheme!r}; use one of {', '.join(_SCHEMES)}.")
    dest = Path(dest)
    target = _target(entry, url, dest)
    if target.exists():
        got = sha256_file(target)
        if got == entry.sha256:
            return target
        raise LibraryError(f"{target}: already exists with sha256 {got}, not {entry.name!r}'s "
                           f"{entry.sha256}. Move it away or choose another destination.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        done = 0
        try:
            with os.fdopen(fd, "wb") as out, _open(url, timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else entry.bytes
                if entry.bytes is not None and length and length.isdigit() and int(length) != entry.bytes:
                    raise LibraryError(f"{url}: server announces {int(length):,} bytes but {entry.name!r} is "
                                       f"{entry.bytes:,} bytes; not the expected file, refused.")
                while block := response.read(CHUNK):
                    done += len(block)
                    if entry.bytes is not None and done > entry.bytes:
                        raise LibraryError(f"{url}: more than the expected {entry.bytes:,} bytes of "
                                           f"{entry.name!r}; not the expected file, refused.")
                    digest.update(block)
                    out.write(block)
                    if progress:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise LibraryError(f"{url}: download failed ({err}). Check the URL and the network, or "
                               "download the file by hand and use `sdf refs build-official --from DIR`."
                               ) from err
        if entry.bytes is not None and done != entry.bytes:
            raise LibraryError(f"{url}: got {done:,} bytes, expected {entry.bytes:,} for {entry.name!r}; "
                               "refused (truncated or a different file).")
        got = digest.hexdigest()
        if got != entry.sha256:
            raise LibraryError(f"{url}: sha256 {got} is not {entry.name!r}'s {entry.sha256}; refused "
                               "(a different or corrupted file).")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def download_first(entry: KnownModel, urls: Sequence[str], dest: Path,
                   progress: Progress | None = None) -> Path:
    """Try :func:`download_official` with each URL in turn; the first verified file wins.

    Raises :class:`LibraryError` listing every URL's failure when none works.
    """
    if not urls:
        raise LibraryError(f"no download URL is known for {entry.name!r}; its source names no Hugging Face "
                           "repository. Download it by hand and use `sdf refs build-official --from DIR`.")
    failures = []
    for url in urls:
        try:
            return download_official(entry, url, dest, progress)
        except LibraryError as err:
            failures.append(str(err))
    raise LibraryError(f"could not download {entry.name!r}: " + " | ".join(failures))
