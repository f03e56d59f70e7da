"""Every kind of bad catalogue image yields (None, reason) or a clean RGB image: never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from recsys.embeddings import images as I


def _png(path: Path, size=(32, 32), mode="RGB") -> Path:
    Image.new(mode, size, "red" if mode == "RGB" else 0).save(path, format="PNG")
    return path


def test_ok_png(tmp_path: Path) -> None:
    im, outcome = I.load_image(str(_png(tmp_path / "a.png")))
    assert outcome == I.OK and im.mode == "RGB" and im.size == (32, 32)


def test_no_uri_and_missing_file(tmp_path: Path) -> None:
    assert I.load_image(None) == (None, I.NO_IMAGE)
    assert I.load_image(str(tmp_path / "nope.jpg")) == (None, I.MISSING)


def test_remote_uri_is_refused_and_file_uri_is_read(tmp_path: Path) -> None:
    assert I.load_image("https://example.com/a.jpg") == (None, I.REMOTE)
    path = _png(tmp_path / "b.png")
    assert I.load_image(f"file://{path}")[1] == I.OK


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.jpg"
    path.mkdir()  # a directory where a file should be: open() fails
    assert I.load_image(str(path)) == (None, I.UNREADABLE)


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    assert I.load_image(str(path)) == (None, I.UNKNOWN_FORMAT)


def test_truncated_jpeg(tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    Image.effect_noise((128, 128), 50).convert("RGB").save(full, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert I.load_image(str(cut)) == (None, I.TRUNCATED)


def test_png_named_jpg_is_decoded_and_flagged(tmp_path: Path) -> None:
    path = _png(tmp_path / "really-a-png.jpg")
    im, outcome = I.load_image(str(path))
    assert outcome == I.OK_EXTENSION_MISMATCH and im is not None and I.is_ok(outcome)


def test_cmyk_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path)
    im, outcome = I.load_image(str(path))
    assert outcome == I.OK_CONVERTED and im.mode == "RGB"
    r, g, b = im.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60  # cyan-free magenta+yellow = red


def test_one_pixel_is_too_small(tmp_path: Path) -> None:
    assert I.load_image(str(_png(tmp_path / "dot.png", size=(1, 1)))) == (None, I.TOO_SMALL)


def test_huge_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _png(tmp_path / "big.png", size=(2000, 1500), mode="L")
    assert I.load_image(str(path), max_pixels=1_000_000) == (None, I.TOO_LARGE)
    assert I.load_image(str(path), max_pixels=4_000_000)[1] == I.OK


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(path)
    im, outcome = I.load_image(str(path))
    assert outcome == I.OK and im.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("uri", [None, "", "missing.png"])
def test_read_bytes_never_raises(uri) -> None:
    assert I.read_bytes(uri) == b""
