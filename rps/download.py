"""Download the Rock-Paper-Scissors data set into ``<dest_root>/<split>/<label>/<file>``.

:func:`download_official` fetches, verifies and safely extracts Laurence Moroney's
official zips; :func:`download_tfds` exports TFDS ``rock_paper_scissors`` v3.0.0 as
PNG. Both build in a temporary sibling folder renamed onto ``dest_root`` only when
complete. Command line: ``python -m rps.download --to data/rps --source zips|tfds``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType

LABELS = ("paper", "rock", "scissors")
"""Class folder names written by this module (alphabetical order)."""

# URLs, sizes and SHA-256 as published by TensorFlow Datasets in
# tensorflow_datasets/datasets/rock_paper_scissors/checksums.tsv
# (tensorflow-datasets 4.9.10; same values in the older file
# github.com/tensorflow/datasets tensorflow_datasets/url_checksums/rock_paper_scissors.txt),
# i.e. the files the TFDS builder ``rock_paper_scissors`` v3.0.0 downloads.
OFFICIAL_URLS = MappingProxyType({
    "train": "https://storage.googleapis.com/download.tensorflow.org/data/rps.zip",
    "test": "https://storage.googleapis.com/download.tensorflow.org/data/rps-test-set.zip",
})
OFFICIAL_SHA256 = MappingProxyType({
    "train": "c2403444395842ad04c53612bad54b574443eae17a0723117a2ff87b9d72194f",
    "test": "c27ab9fa43ce40b2e453de711365b477f4424586edf0388116674fd320f07503",
})
OFFICIAL_SIZES_BYTES = MappingProxyType({"train": 200_682_221, "test": 29_516_758})

# The course's 33-image "validation" zip (flat folder, label = file-name prefix).
# Nobody publishes a checksum for it, so it is NOT downloaded by default: pass
# base_urls={**OFFICIAL_URLS, "validation": VALIDATION_URL} together with
# checksums={**OFFICIAL_SHA256, "validation": None} to opt in unverified.
VALIDATION_URL = "https://storage.googleapis.com/learning-datasets/rps-validation.zip"

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PREFIX_RE = re.compile(r"^(paper|rock|scissors)", re.IGNORECASE)
_CHUNK_BYTES = 1 << 20


def _check_dest(dest_root: Path) -> None:
    if dest_root.is_file() or (dest_root.is_dir() and any(dest_root.iterdir())):
        raise FileExistsError(
            f"{dest_root} already exists and is not empty; remove it or choose another --to folder"
        )


def _atomic_build(dest_root: os.PathLike | str, build: Callable[[Path], None]) -> Path:
    """Run ``build(staging)`` in a temporary sibling folder, then rename it onto ``dest_root``."""
    dest_root = Path(dest_root).absolute()
    _check_dest(dest_root)
    dest_root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{dest_root.name}-", dir=dest_root.parent))
    try:
        build(staging)
        _check_dest(dest_root)  # someone may have filled it meanwhile
        if dest_root.is_dir():
            dest_root.rmdir()
        os.replace(staging, dest_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest_root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, sha256: str | None, timeout_s: float) -> Path:
    """Stream ``url`` to ``target`` (via a temporary file) and verify its SHA-256."""
    from tqdm import tqdm

    if target.exists() and sha256 is not None and _sha256(target) == sha256:
        return target  # valid cached copy
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                              disable=None) as bar:
                        for chunk in iter(lambda: resp.read(_CHUNK_BYTES), b""):
                            out.write(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
                    ConnectionError) as exc:
                raise ConnectionError(f"could not download {url}: {exc}") from exc
        if sha256 is not None:
            actual = _sha256(tmp)
            if actual != sha256.lower():
                raise ValueError(
                    f"SHA-256 mismatch for {url}: expected {sha256.lower()}, got {actual}"
                )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # the partial or bad file never survives
    return target


def _check_members(zf: zipfile.ZipFile, root: Path) -> None:
    """Reject absolute paths, symlinks and members that would land outside ``root``."""
    root = root.resolve()
    for info in zf.infolist():
        name = info.filename
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise ValueError(f"unsafe zip member (absolute path): {name!r}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError(f"unsafe zip member (symlink): {name!r}")
        if not (root / name.replace("\\", "/")).resolve().is_relative_to(root):
            raise ValueError(f"unsafe zip member (escapes the target folder): {name!r}")


def _label_of(name: str) -> str | None:
    """Label from a parent folder named like a label, else from the file-name prefix."""
    path = PurePosixPath(name.replace("\\", "/"))
    for part in reversed(path.parts[:-1]):
        if part.lower() in LABELS:
            return part.lower()
    match = _PREFIX_RE.match(path.name)
    return match.group(1).lower() if match else None


def _extract_split(zip_path: Path, split_dir: Path) -> int:
    """Safely extract the images of ``zip_path`` into ``split_dir/<label>/``; return the count."""
    count = 0
    with zipfile.ZipFile(zip_path) as zf:
        _check_members(zf, split_dir)
        for info in zf.infolist():
            path = PurePosixPath(info.filename.replace("\\", "/"))
            if (info.is_dir() or path.suffix.lower() not in _IMAGE_SUFFIXES
                    or path.name.startswith(".") or "__MACOSX" in path.parts):
                continue
            label = _label_of(info.filename)
            if label is None:
                continue
            target = split_dir / label / path.name
            if target.exists():
                raise ValueError(f"duplicate image name {path.name!r} in {zip_path.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK_BYTES)
            count += 1
    return count


def download_official(
    dest_root: os.PathLike | str,
    *,
    base_urls: Mapping[str, str] | None = None,
    checksums: Mapping[str, str | None] | None = None,
    timeout_s: float = 60.0,
    cache_dir: os.PathLike | str | None = None,
) -> Path:
    """Download the official Rock-Paper-Scissors zips and lay them out by split and label.

    Sources (see :data:`OFFICIAL_URLS`): train
    https://storage.googleapis.com/download.tensorflow.org/data/rps.zip
    (2,520 images, 200,682,221 bytes) and test
    https://storage.googleapis.com/download.tensorflow.org/data/rps-test-set.zip
    (372 images, 29,516,758 bytes). The course's validation zip
    (:data:`VALIDATION_URL`, 33 images) has no published checksum and is only
    fetched when listed in ``base_urls``.

    Each zip is streamed to a temporary file (progress bar on stderr), checked
    against its SHA-256, extracted safely and laid out as
    ``dest_root/<split>/<label>/<file>``. The work happens in
    ``dest_root.parent/.tmp-<name>-<random>``, renamed onto ``dest_root`` at the end.

    Args:
        dest_root: Folder to create; must not exist or be empty.
        base_urls: Mapping split name (``train``, ``test``, ``validation``) to
            zip URL. Default: :data:`OFFICIAL_URLS`.
        checksums: Mapping split name to expected lowercase hex SHA-256.
            Default: :data:`OFFICIAL_SHA256` (published by TFDS). Every name in
            ``base_urls`` needs an entry; an explicit ``None`` value skips the
            check for that zip.
        timeout_s: Socket timeout per connection/read, in seconds.
        cache_dir: Folder where the zips are kept and reused when their
            checksum matches. Default: none (zips are deleted afterwards).

    Returns:
        The absolute path of ``dest_root``.

    Raises:
        FileExistsError: ``dest_root`` exists and is not empty.
        KeyError: a name in ``base_urls`` has no entry in ``checksums``.
        ConnectionError: a download failed (HTTP error, refused, timeout); names the URL.
        ValueError: SHA-256 mismatch (names URL, expected and actual hash; the
            file is deleted), or an unsafe zip member (zip-slip, absolute path,
            symlink; names the member).
    """
    urls = dict(OFFICIAL_URLS if base_urls is None else base_urls)
    sums = dict(OFFICIAL_SHA256 if checksums is None else checksums)
    missing = sorted(set(urls) - set(sums))
    if missing:
        raise KeyError(f"no SHA-256 given for {missing}; pass None explicitly to skip the check")

    def build(staging: Path) -> None:
        zip_dir = Path(cache_dir) if cache_dir is not None else staging / ".zips"
        zip_dir.mkdir(parents=True, exist_ok=True)
        for split, url in urls.items():
            file_name = PurePosixPath(urllib.parse.urlparse(url).path).name or f"{split}.zip"
            zip_path = _fetch(url, zip_dir / file_name, sums[split], timeout_s)
            n = _extract_split(zip_path, staging / split)
            print(f"{split}: {n} images from {url}", file=sys.stderr)
        if cache_dir is None:
            shutil.rmtree(zip_dir)

    return _atomic_build(dest_root, build)


def download_tfds(
    dest_root: os.PathLike | str,
    *,
    data_dir: os.PathLike | str | None = None,
    download: bool = True,
) -> Path:
    """Export TFDS ``rock_paper_scissors`` (v3.0.0) as PNG files by split and label.

    TFDS downloads the same official zips
    (https://storage.googleapis.com/download.tensorflow.org/data/rps.zip and
    .../rps-test-set.zip) and verifies them itself. Only ``train`` and ``test``
    exist there (no validation split). Label names come from
    ``info.features["label"].names`` (TFDS order is rock, paper, scissors);
    files are named ``<split>-<index:05d>.png``. Built atomically like
    :func:`download_official`.

    Args:
        dest_root: Folder to create; must not exist or be empty.
        data_dir: TFDS data folder (default: TFDS's own, ``~/tensorflow_datasets``).
        download: Let TFDS download and prepare the data if missing.

    Returns:
        The absolute path of ``dest_root``.

    Raises:
        FileExistsError: ``dest_root`` exists and is not empty.
        Exception: whatever :func:`tensorflow_datasets.load` raises (for
            example when the data is missing and ``download`` is False).
    """
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    def build(staging: Path) -> None:
        for split in ("train", "test"):
            ds, info = tfds.load("rock_paper_scissors", split=split, as_supervised=True,
                                 data_dir=None if data_dir is None else os.fspath(data_dir),
                                 download=download, with_info=True)
            names = info.features["label"].names
            n = 0
            for n, (image, label) in enumerate(tfds.as_numpy(ds), start=1):
                folder = staging / split / names[int(label)]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
                    folder / f"{split}-{n - 1:05d}.png")
            print(f"{split}: {n} images from TFDS", file=sys.stderr)

    return _atomic_build(dest_root, build)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rps.download --to data/rps --source zips|tfds``.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        Exit status 0 on success (errors propagate as exceptions).
    """
    parser = argparse.ArgumentParser(prog="python -m rps.download",
                                     description="Download the Rock-Paper-Scissors data set.")
    add = parser.add_argument
    add("--to", required=True, type=Path, help="destination folder (absent or empty)")
    add("--source", choices=("zips", "tfds"), default="zips")
    add("--timeout", type=float, default=60.0, help="socket timeout, seconds (zips)")
    add("--cache-dir", type=Path, help="keep and reuse the downloaded zips here (zips)")
    add("--with-validation", action="store_true",
        help="also fetch the 33-image validation zip, which has NO published checksum (zips)")
    add("--data-dir", type=Path, help="TFDS data_dir (tfds)")
    args = parser.parse_args(argv)
    if args.source == "tfds":
        out = download_tfds(args.to, data_dir=args.data_dir)
    else:
        urls, sums = dict(OFFICIAL_URLS), dict(OFFICIAL_SHA256)
        if args.with_validation:
            print("warning: validation zip is not checksum-verified", file=sys.stderr)
            urls["validation"], sums["validation"] = VALIDATION_URL, None
        out = download_official(args.to, base_urls=urls, checksums=sums,
                                timeout_s=args.timeout, cache_dir=args.cache_dir)
    print(f"data written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
