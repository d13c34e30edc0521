"""Tests for rps.download: fake zips served from a loopback HTTP server, TFDS mock data."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rps import download as dl


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _make_zip(path: Path, names: list[str], dirs: tuple[str, ...] = ()) -> str:
    """Write a zip with one tiny PNG per name; return its SHA-256."""
    with zipfile.ZipFile(path, "w") as zf:
        for d in dirs:
            zf.writestr(d, b"")
        for i, name in enumerate(names):
            zf.writestr(zipfile.ZipInfo(name), _png(i))
    return hashlib.sha256(path.read_bytes()).hexdigest()


TRAIN = ["rps/paper/paper01-000.png", "rps/rock/rock01-000.png",
         "rps/scissors/scissors01-000.png", "rps/scissors/scissors01-001.png"]
TEST = ["rps-test-set/paper/testpaper01-00.png", "rps-test-set/rock/testrock01-00.png",
        "rps-test-set/scissors/testscissors01-00.png"]
VALIDATION = ["paper1.png", "rock-hires1.png", "scissors2.png"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/srv`` on 127.0.0.1:<free port>; yields (base_url, folder)."""
    root = tmp_path / "srv"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def fake_zips(server):
    """Official-layout zips on the server; yields (urls, checksums)."""
    base, root = server
    sums = {
        "train": _make_zip(root / "rps.zip", TRAIN, dirs=("rps/", "rps/paper/")),
        "test": _make_zip(root / "rps-test-set.zip", TEST),
        "validation": _make_zip(root / "rps-validation.zip", VALIDATION),
    }
    urls = {"train": f"{base}/rps.zip", "test": f"{base}/rps-test-set.zip",
            "validation": f"{base}/rps-validation.zip"}
    return urls, sums


def _tree(root: Path) -> dict[str, list[str]]:
    return {str(p.relative_to(root)): sorted(f.name for f in p.iterdir())
            for p in sorted(root.glob("*/*")) if p.is_dir()}


def _no_leftovers(parent: Path) -> bool:
    return not list(parent.glob(".tmp-*"))


def test_download_official_layout(fake_zips, tmp_path):
    urls, sums = fake_zips
    dest = tmp_path / "data" / "rps"
    dest.mkdir(parents=True)  # an existing empty folder is fine
    out = dl.download_official(dest, base_urls=urls, checksums=sums, timeout_s=10)
    assert out == dest.absolute()
    assert _tree(dest) == {
        "test/paper": ["testpaper01-00.png"], "test/rock": ["testrock01-00.png"],
        "test/scissors": ["testscissors01-00.png"],
        "train/paper": ["paper01-000.png"], "train/rock": ["rock01-000.png"],
        "train/scissors": ["scissors01-000.png", "scissors01-001.png"],
        "validation/paper": ["paper1.png"], "validation/rock": ["rock-hires1.png"],
        "validation/scissors": ["scissors2.png"],
    }
    files = sorted(dest.rglob("*.png"))
    assert len(files) == len(TRAIN) + len(TEST) + len(VALIDATION)
    for f in files:
        with Image.open(f) as im:
            assert im.size == (8, 8)
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train", "validation"]
    assert _no_leftovers(dest.parent)


def test_cache_dir_reuses_verified_zips(fake_zips, server, tmp_path):
    urls, sums = fake_zips
    cache = tmp_path / "cache"
    dl.download_official(tmp_path / "a", base_urls=urls, checksums=sums, cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == [
        "rps-test-set.zip", "rps-validation.zip", "rps.zip"]
    for f in server[1].iterdir():  # the server has nothing left: must come from the cache
        f.unlink()
    dl.download_official(tmp_path / "b", base_urls=urls, checksums=sums, cache_dir=cache)
    assert len(list((tmp_path / "b").rglob("*.png"))) == 10


def test_wrong_checksum(fake_zips, tmp_path):
    urls, sums = fake_zips
    bad = dict(sums, test="0" * 64)
    dest, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(ValueError) as err:
        dl.download_official(dest, base_urls=urls, checksums=bad, cache_dir=cache)
    msg = str(err.value)
    assert urls["test"] in msg and "0" * 64 in msg and sums["test"] in msg
    assert not dest.exists()
    assert _no_leftovers(tmp_path)
    assert not (cache / "rps-test-set.zip").exists()  # bad file deleted
    assert not list(cache.glob("*.part"))


def test_missing_checksum_entry(fake_zips, tmp_path):
    urls, sums = fake_zips
    with pytest.raises(KeyError, match="validation"):
        dl.download_official(tmp_path / "out", base_urls=urls,
                             checksums={"train": sums["train"], "test": sums["test"]})
    assert not (tmp_path / "out").exists()


def test_explicit_none_skips_check(fake_zips, tmp_path):
    urls, _ = fake_zips
    only = {"validation": urls["validation"]}
    dl.download_official(tmp_path / "out", base_urls=only, checksums={"validation": None})
    assert len(list((tmp_path / "out" / "validation").rglob("*.png"))) == 3


def _unsafe_zip(path: Path, kind: str) -> tuple[str, str]:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rps/rock/ok.png", _png(0))
        if kind == "symlink":
            info = zipfile.ZipInfo("rps/rock/link.png")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../../evil.png")
            member = "rps/rock/link.png"
        else:
            member = {"slip": "../evil.png", "deep": "rps/../../evil.png",
                      "absolute": "/tmp/evil.png"}[kind]
            zf.writestr(zipfile.ZipInfo(member), _png(1))
    return member, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["slip", "deep", "absolute", "symlink"])
def test_unsafe_members_rejected(server, tmp_path, kind):
    base, root = server
    member, digest = _unsafe_zip(root / "evil.zip", kind)
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "rps"
    with pytest.raises(ValueError) as err:
        dl.download_official(dest, base_urls={"train": f"{base}/evil.zip"},
                             checksums={"train": digest})
    assert member in str(err.value)
    assert not dest.exists()
    assert list(work.iterdir()) == []  # no temp folder, nothing written beside it
    assert [p for p in tmp_path.rglob("evil.png")] == []


def test_existing_nonempty_dest(fake_zips, tmp_path):
    urls, sums = fake_zips
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        dl.download_official(dest, base_urls=urls, checksums=sums)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert _no_leftovers(tmp_path)


def test_http_404(server, tmp_path):
    url = f"{server[0]}/missing.zip"
    with pytest.raises(ConnectionError) as err:
        dl.download_official(tmp_path / "out", base_urls={"train": url},
                             checksums={"train": "0" * 64}, timeout_s=5)
    assert url in str(err.value) and "404" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert _no_leftovers(tmp_path)


def test_main_zips(fake_zips, tmp_path, monkeypatch, capsys):
    urls, sums = fake_zips
    monkeypatch.setattr(dl, "OFFICIAL_URLS", {k: urls[k] for k in ("train", "test")})
    monkeypatch.setattr(dl, "OFFICIAL_SHA256", {k: sums[k] for k in ("train", "test")})
    dest = tmp_path / "cli"
    assert dl.main(["--to", str(dest), "--source", "zips", "--timeout", "10"]) == 0
    assert f"data written to {dest.absolute()}" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]
    assert len(list(dest.rglob("*.png"))) == len(TRAIN) + len(TEST)


def test_download_tfds_mock(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    dest = tmp_path / "tfds_out"
    # USE_CODE builds the features from the builder code: no metadata download needed.
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        assert dl.main(["--to", str(dest), "--source", "tfds",
                        "--data-dir", str(tmp_path / "tfds_data")]) == 0
    assert f"data written to {dest.absolute()}" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]
    for split in ("train", "test"):
        files = sorted((dest / split).glob("*/*.png"))
        assert len(files) == 6
        assert {f.parent.name for f in files} <= set(dl.LABELS)
        for f in files:
            with Image.open(f) as im:
                assert im.size == (300, 300) and im.mode == "RGB"
    assert _no_leftovers(tmp_path)
