"""Per-file image checks with Pillow: readable, complete, decodable by TensorFlow, not a bomb.

Usage: ``digest, note = inspect_image("hand.png", max_pixels=50_000_000)``.

Every image is checked once before training (``rps.data.check_split``), before prediction
(``rps.predict``) and by ``rps check-data``, so that a bad file stops the run with a message
naming it instead of a TensorFlow traceback in the middle of an epoch.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading
import warnings
from pathlib import Path

from PIL import Image

# Formats that TensorFlow's decode_image reads, by Pillow's name (MPO: a camera JPEG with extra
# frames). Anything else (TIFF, ICO, ...) would pass Pillow's check and then fail in tf.data.
DECODABLE_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP")
# warnings.catch_warnings swaps process-wide state, so threads that enter and leave it at once
# can restore each other's filters; Image.open (header only, fast) is serialised around it.
_OPEN_LOCK = threading.Lock()


def display_path(path: str | Path) -> str:
    """``path`` as printable text: bytes of a file name that are not valid UTF-8 (kept by
    Python as lone surrogates, which ``print`` refuses) appear as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    """True when ``name`` (a path or file name) encodes as UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inspect_image(path: str, max_pixels: int) -> tuple[str, str | None]:
    """Check that one image file is usable, decoding it fully with Pillow.

    The pixel limit is checked on the size in the file header, before any pixel is decoded,
    so a decompression bomb (say a 20000x20000 PNG of 50 kB) is refused without using
    memory. Above Pillow's own hard limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, 179 Mpx, which
    also caps ``data.max_image_pixels``) Pillow refuses the header itself
    (``DecompressionBombError``); that gives the same clear error.

    Args:
        path: the image file.
        max_pixels: largest accepted width x height, in pixels (``data.max_image_pixels``).

    Returns:
        ``(sha256, note)``: the SHA-256 hex digest of the file's bytes, and a warning for a file
        that is accepted with a caveat (an animated GIF: only its first frame is used), else
        ``None``.

    Raises:
        ValueError: the file name is not valid UTF-8; the file cannot be read, is empty, is not
            an image, is truncated, is larger than ``max_pixels``, is a CMYK JPEG, a palette
            BMP or in a format TensorFlow cannot decode. The message starts with the file
            name and gives the reason.
    """
    name = display_path(path)
    if not is_utf8(str(path)):
        raise ValueError(f"{name}: file name is not valid UTF-8; rename it (TensorFlow reads "
                         f"paths as UTF-8 text)")
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    except OSError as err:  # missing, a directory, a symlink loop, no permission
        raise ValueError(f"{name}: cannot be read ({err.strerror or err})") from err
    if not size:
        raise ValueError(f"{name}: empty file (0 bytes)")
    note = None
    try:
        # Images between Pillow's two limits only warn; the max_pixels check below decides.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise ValueError(f"{name}: {width}x{height} pixels exceeds data.max_image_pixels="
                                 f"{max_pixels} (decompression-bomb guard)")
            if img.format not in DECODABLE_FORMATS:
                raise ValueError(f"{name}: {img.format} format; TensorFlow decodes only PNG, "
                                 f"JPEG, GIF, BMP and WebP: convert it to PNG or JPEG")
            if img.mode == "CMYK":
                raise ValueError(f"{name}: CMYK JPEG; convert it to RGB")
            if img.format == "BMP" and img.mode in ("P", "1"):
                raise ValueError(f"{name}: palette BMP (mode {img.mode}), which TensorFlow would "
                                 f"read as gray levels; convert it to 24-bit RGB or PNG")
            if getattr(img, "n_frames", 1) > 1:
                note = f"{name}: animated {img.format} with {img.n_frames} frames; the first is used"
            img.load()  # full decode: catches truncated files that a header check would miss
    except ValueError:
        raise
    except Image.DecompressionBombError as err:  # over Pillow's hard limit: refused in open()
        raise ValueError(f"{name}: over {2 * Image.MAX_IMAGE_PIXELS} pixels, exceeds "
                         f"data.max_image_pixels={max_pixels} (decompression-bomb guard; "
                         f"Pillow refused it from the header)") from err
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ...) for bad files.
        raise ValueError(f"{name}: not a readable image ({type(err).__name__}: {err})") from err
    return digest.hexdigest(), note


def check_image_file(path: str, max_pixels: int) -> str:
    """Read one image file fully and check it decodes; return the SHA-256 of its bytes.

    See ``inspect_image``, which this calls, for the checks.

    Returns:
        The SHA-256 hex digest of the file's bytes.

    Raises:
        ValueError: the file is unusable; the message names the file and the reason.
    """
    return inspect_image(path, max_pixels)[0]


def inspect_files(paths: tuple[str, ...], max_pixels: int
                   ) -> tuple[list[str | None], list[str], list[str]]:
    """``inspect_image`` on each file, in parallel threads (Pillow releases the GIL while it
    decodes).

    Args:
        paths: image files.
        max_pixels: see ``inspect_image``.

    Returns:
        ``(digests, errors, notes)``: one SHA-256 per file (``None`` for a bad file), the error
        message of each bad file, the caveat of each accepted file that has one.
    """
    digests, bad, notes = [], [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(inspect_image, p, max_pixels) for p in paths]
        for future in futures:
            try:
                digest, note = future.result()
            except ValueError as err:
                digest, note = None, None
                bad.append(str(err))
            digests.append(digest)
            notes += [note] if note else []
    return digests, bad, notes
