"""The bad-input corpus of docs/reliability.md: each kind of bad file or folder, built in a
temporary folder, has one documented behaviour (accepted, accepted with a warning naming the
file, or refused with an error naming the file), both in training (``load_splits``) and in
``rps check-data`` (``check_folder``); accepted odd formats decode to the right 8-bit RGB pixels.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from rps.config import build_config
from rps.data import check_folder, load_splits
from rps.imagecheck import display_path
from rps.preprocess import decode_and_resize

from conftest import REPO, make_image

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8)


def _cfg(root, *overrides):
    return build_config(overrides=[f"data.root={root}", "data.image_size=32",
                                   "data.global_batch_size=4", *overrides])


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: about 50 kB on disk, 1.2 GB as RGB."""
    row = b"\0" + b"\0" * ((side + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def png16() -> tuple[bytes, np.ndarray]:
    """A 16-bit RGB PNG (Pillow cannot write one) and its expected 8-bit pixels (high bytes)."""
    deep = RNG.integers(0, 65536, (24, 24, 3)).astype(np.uint16)
    return tf.io.encode_png(tf.constant(deep)).numpy(), (deep >> 8).astype(np.uint8)


def palette_with_transparency() -> tuple[bytes, np.ndarray]:
    """A palette PNG whose index 0 is transparent, and its expected pixels over white."""
    image = Image.fromarray(PIXELS).quantize(colors=8)
    data = _encode(image, "PNG", transparency=0)
    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    return data, np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((24, 24, 3), 60 * i, np.uint8)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def _write(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _jpeg() -> bytes:
    return _encode(Image.fromarray(PIXELS), "JPEG", quality=95)


# name -> (make(root) -> text the message must contain, behaviour, reason in the message).
# Behaviours: "error" stops load_splits and makes check-data fail; "warn" is accepted with a
# warning that names the file; "ok" is accepted silently.
def _symlink_loop(root):
    path = root / "train" / "rock" / "loop.png"
    path.symlink_to(path.name)
    return str(path)


def _broken_symlink(root):
    path = root / "train" / "rock" / "gone.png"
    path.symlink_to(root / "nowhere.png")
    return str(path)


def _non_utf8_name(root):
    folder = os.fsencode(root / "train" / "rock")
    path = os.path.join(folder, b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    with open(path, "wb") as f:
        f.write(_encode(Image.fromarray(PIXELS), "PNG"))
    return display_path(os.fsdecode(path))


def _empty_class(root):
    for f in (root / "train" / "rock").iterdir():
        f.unlink()
    return str(root / "train" / "rock")


def _class_not_in_train(root):
    make_image(root / "test" / "lizard" / "a.png", 0, 0)
    return "['lizard']"


def _duplicate(root):
    (root / "test" / "rock" / "copy.png").write_bytes((root / "train" / "paper" / "paper03.png").read_bytes())
    return f"{root / 'train' / 'paper' / 'paper03.png'} == {root / 'test' / 'rock' / 'copy.png'}"


CORPUS = {
    "zero-byte file": (lambda r: str(_write(r, "train/rock/zero.png", b"")), "error",
                       "empty file (0 bytes)"),
    "truncated PNG": (lambda r: str(_write(r, "train/rock/cut.png", _encode(
        Image.fromarray(PIXELS), "PNG")[:-60])), "error", "not a readable image"),
    "truncated JPEG": (lambda r: str(_write(r, "train/rock/cut.jpg", _jpeg()[:400])), "error",
                       "not a readable image"),
    "text file named .jpg": (lambda r: str(_write(r, "train/rock/notes.jpg", b"hello, world\n")),
                             "error", "not a readable image (UnidentifiedImageError"),
    "16-bit PNG": (lambda r: str(_write(r, "train/rock/deep.png", png16()[0])), "ok", ""),
    "grayscale PNG": (lambda r: str(_write(r, "train/rock/gray.png", _encode(
        Image.fromarray(PIXELS).convert("L"), "PNG"))), "ok", ""),
    "CMYK JPEG": (lambda r: str(_write(r, "train/rock/cmyk.jpg", _encode(
        Image.fromarray(PIXELS).convert("CMYK"), "JPEG"))), "error", "CMYK JPEG; convert it to RGB"),
    "palette PNG with transparency": (lambda r: str(_write(
        r, "train/rock/palette.png", palette_with_transparency()[0])), "ok", ""),
    "animated GIF": (lambda r: str(_write(r, "train/rock/anim.gif", animated_gif())), "warn",
                     "animated GIF with 3 frames; the first is used"),
    "decompression bomb (20000x20000 PNG)": (lambda r: str(_write(r, "train/rock/bomb.png", bomb_png())),
                                             "error", "exceeds data.max_image_pixels=50000000"),
    "1x1 image": (lambda r: str(_write(r, "train/rock/dot.png", _encode(
        Image.fromarray(PIXELS[:1, :1]), "PNG"))), "ok", ""),
    "non-UTF-8 file name": (_non_utf8_name, "error", "file name is not valid UTF-8"),
    "symlink loop": (_symlink_loop, "error", "cannot be read (Too many levels of symbolic links)"),
    "broken symlink": (_broken_symlink, "error", "cannot be read (No such file or directory)"),
    "empty class folder": (_empty_class, "error", "is empty or missing"),
    "stray non-image file": (lambda r: str(_write(r, "train/rock/Thumbs.db", b"\0" * 64)), "warn",
                             "non-image file"),
    "class in test/ that train/ lacks": (_class_not_in_train, "error", "that train/ lacks"),
    "same image in train/ and test/": (_duplicate, "error", "byte-identical"),
    "TIFF named .png": (lambda r: str(_write(r, "train/rock/scan.png", _encode(
        Image.fromarray(PIXELS), "TIFF"))), "error", "TIFF format; TensorFlow decodes only"),
    "palette BMP": (lambda r: str(_write(r, "train/rock/pal.bmp", _encode(
        Image.fromarray(PIXELS).quantize(colors=8), "BMP"))), "error", "palette BMP"),
}


@pytest.mark.parametrize("kind", list(CORPUS))
def test_corpus_behaviour(kind, tiny_root, caplog):
    make, behaviour, reason = CORPUS[kind]
    named = make(tiny_root)
    cfg = _cfg(tiny_root)
    report = check_folder(tiny_root, cfg.data)
    if behaviour == "error":
        with pytest.raises(ValueError) as err:
            load_splits(cfg.data, seed=0)
        message = str(err.value)
        assert named in message and reason in message, message
        assert not report["usable"]
        assert any(named in e and reason in e for e in report["errors"]), report["errors"]
        return
    splits = load_splits(cfg.data, seed=0)
    assert report["usable"], report["errors"]
    if behaviour == "warn":
        assert named in caplog.text and reason in caplog.text
        assert any(named in w and reason in w for w in report["warnings"]), report["warnings"]
    else:
        assert not report["warnings"] and "WARNING" not in caplog.text
    used = splits.train.paths + splits.val.paths
    assert (named in used) == (kind != "stray non-image file")


def test_corpus_has_at_least_15_kinds():
    assert len(CORPUS) >= 15


def test_skip_bad_images_lists_every_skipped_file(tiny_root, caplog):
    names = [CORPUS[k][0](tiny_root) for k in ("zero-byte file", "truncated JPEG", "symlink loop",
                                                 "decompression bomb (20000x20000 PNG)")]
    cfg = _cfg(tiny_root, "data.skip_bad_images=true")
    splits = load_splits(cfg.data, seed=0)
    assert len(splits.train) + len(splits.val) == 24
    assert all(n in caplog.text for n in names) and "skipping 4 unreadable image(s)" in caplog.text
    report = check_folder(tiny_root, cfg.data)
    assert report["usable"] and report["splits"]["train"]["bad"] == 4


def test_hidden_files_are_ignored_silently(tiny_root, caplog):
    _write(tiny_root, "train/rock/.DS_Store", b"\0\1\2")
    _write(tiny_root, "test/rock/._rock00.png", b"AppleDouble")
    splits = load_splits(_cfg(tiny_root).data, seed=0)
    assert len(splits.test) == 9 and "DS_Store" not in caplog.text


def test_bomb_is_refused_before_decoding(tiny_root, recwarn):
    """10000x10000 (100 Mpx): over data.max_image_pixels, under Pillow's hard limit (and over
    its warning threshold, which stays silent). Refused from the header: fast, and without the
    300 MB an RGB decode would take."""
    bomb = _write(tiny_root, "train/rock/bomb.png", bomb_png(10000))
    assert bomb.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"{bomb}: 10000x10000 pixels exceeds "
                                         f"data.max_image_pixels=50000000"):
        load_splits(_cfg(tiny_root).data, seed=0)
    assert time.perf_counter() - start < 10
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pillow_bomb_guard_gives_a_clear_error(tiny_root):
    """20000x20000 (400 Mpx) is over Pillow's own hard limit (2 x 89.5 Mpx): Pillow refuses it
    in Image.open, and that is still a ValueError naming the file, not a raw
    DecompressionBombError."""
    bomb = _write(tiny_root, "train/rock/bomb.png", bomb_png())
    with pytest.raises(ValueError, match=f"{bomb}: over 178956970 pixels, exceeds "
                                         f"data.max_image_pixels=50000000"):
        load_splits(_cfg(tiny_root).data, seed=0)


def test_pixel_limit_cannot_exceed_pillows():
    from rps.config import ConfigError

    with pytest.raises(ConfigError, match="between 1 and 178956970"):
        build_config(overrides=["data.max_image_pixels=200000000"])


def test_duplicates_can_be_downgraded_to_a_warning(tiny_root, caplog):
    pair = _duplicate(tiny_root)
    cfg = _cfg(tiny_root, "data.allow_duplicates=true")
    splits = load_splits(cfg.data, seed=0)
    assert len(splits.test) == 10 and pair in caplog.text
    assert "data.allow_duplicates=true" in caplog.text
    report = check_folder(tiny_root, cfg.data)
    assert report["usable"] and any(pair in w for w in report["warnings"])


def test_duplicate_error_says_how_to_fix(tiny_root):
    _duplicate(tiny_root)
    with pytest.raises(ValueError, match="1 image\\(s\\) in 'test' are byte-identical to 'train'"
                                         "(.|\n)*set data.allow_duplicates=true"):
        load_splits(_cfg(tiny_root).data, seed=0)


def test_duplicates_inside_train_are_a_warning(tiny_root):
    _write(tiny_root, "train/rock/again.png", (tiny_root / "train/rock/rock00.png").read_bytes())
    report = check_folder(tiny_root, _cfg(tiny_root).data)
    assert report["usable"]
    assert any("duplicate image(s) inside the split" in w and "again.png" in w
               for w in report["warnings"])


def _decode_both_ways(data: bytes, size: int) -> np.ndarray:
    """decode_and_resize eagerly and inside tf.data.map; the two must agree."""
    eager = decode_and_resize(tf.constant(data), size).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(data).map(
        lambda b: decode_and_resize(b, size)))).numpy()
    np.testing.assert_array_equal(eager, mapped)
    assert eager.dtype == np.uint8 and eager.shape == (size, size, 3)
    return eager


def test_16_bit_png_decodes_to_its_high_bytes():
    data, expected = png16()
    np.testing.assert_array_equal(_decode_both_ways(data, 24), expected)
    # Pillow reads 48-bit PNGs the same way, so the file check and training agree.
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), expected)


def test_palette_transparency_is_composited_on_white():
    data, expected = palette_with_transparency()
    got = _decode_both_ways(data, 24)
    np.testing.assert_array_equal(got, expected)
    transparent = np.asarray(Image.open(io.BytesIO(data))) == 0
    assert transparent.any() and (got[transparent] == 255).all()


def test_rgba_and_gray_alpha_are_composited_on_white():
    rgba = np.dstack([PIXELS, np.where(np.arange(24) < 12, 0, 255).astype(np.uint8)[None].repeat(24, 0)])
    got = _decode_both_ways(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), 24)
    assert (got[:, :12] == 255).all() and np.array_equal(got[:, 12:], PIXELS[:, 12:])
    gray_alpha = Image.fromarray(rgba, "RGBA").convert("LA")
    got = _decode_both_ways(_encode(gray_alpha, "PNG"), 24)
    assert (got[:, :12] == 255).all() and (got[..., 0] == got[..., 2]).all()


def test_opaque_images_decode_exactly_as_before():
    """Compositing must not change opaque images (the real data: RGB JPEGs, opaque RGBA PNGs)."""
    for image in (Image.fromarray(PIXELS), Image.fromarray(PIXELS).convert("RGBA")):
        np.testing.assert_array_equal(_decode_both_ways(_encode(image, "PNG"), 24), PIXELS)


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(PIXELS).convert("L")
    got = _decode_both_ways(_encode(gray, "PNG"), 24)
    np.testing.assert_array_equal(got, np.repeat(np.asarray(gray)[..., None], 3, -1))


def test_animated_gif_uses_its_first_frame():
    got = _decode_both_ways(animated_gif(), 24)
    assert (got == 0).all()  # frame 0 is black; frames 1 and 2 are not


def test_one_pixel_image_is_resized():
    got = _decode_both_ways(_encode(Image.fromarray(PIXELS[:1, :1]), "PNG"), 32)
    assert (got == PIXELS[0, 0]).all()


@pytest.mark.slow
def test_check_data_cli(tiny_root):
    """`rps check-data`: exit 0 on a good folder, 2 on a bad one, with the files named and no
    traceback, even for a file name that is not UTF-8."""
    def check(*extra):
        return subprocess.run([sys.executable, "-m", "rps", "check-data", str(tiny_root), *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    good = check()
    assert good.returncode == 0, good.stdout + good.stderr[-2000:]
    assert "train: 24 usable image(s) (paper 8, rock 8, scissors 8), 0 bad" in good.stdout
    assert f"next: rps train data.root={tiny_root}" in good.stdout
    names = [CORPUS[k][0](tiny_root) for k in ("zero-byte file", "non-UTF-8 file name",
                                                 "symlink loop", "same image in train/ and test/")]
    bad = check()
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert all(n in bad.stdout for n in names), bad.stdout
    assert "usable: no" in bad.stdout
    as_json = check("--json", "data.skip_bad_images=true", "data.allow_duplicates=true")
    assert as_json.returncode == 0, as_json.stdout
