"""Robust image loading for catalogues: one bad file never stops a run.

`load_image` returns `(image, outcome)` and never raises. The image is RGB or None; the outcome
is one of `OUTCOMES`: the `ok*` outcomes carry an image, every other one says why there is none.
A PNG named `.jpg` and a CMYK JPEG are decoded (PIL sniffs the content; CMYK is converted) and
counted under their own outcome, so a catalogue's quirks show up in the backfill's summary.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

OK = "ok"
OK_EXTENSION_MISMATCH = "ok: content does not match extension"
OK_CONVERTED = "ok: converted to RGB"
NO_IMAGE = "no image"
MISSING = "missing file"
UNREADABLE = "unreadable file"
UNKNOWN_FORMAT = "unknown format"
TRUNCATED = "truncated or corrupt"
TOO_SMALL = "too small"
TOO_LARGE = "too large"
REMOTE = "remote uri not supported"
OUTCOMES = (OK, OK_EXTENSION_MISMATCH, OK_CONVERTED, NO_IMAGE, MISSING, UNREADABLE, UNKNOWN_FORMAT,
            TRUNCATED, TOO_SMALL, TOO_LARGE, REMOTE)

_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"}, "PNG": {".png"}, "GIF": {".gif"}, "WEBP": {".webp"},
    "BMP": {".bmp"}, "TIFF": {".tif", ".tiff"}, "PPM": {".ppm", ".pgm", ".pbm", ".pnm"},
}


def is_ok(outcome: str) -> bool:
    return outcome.startswith(OK)


def resolve_uri(uri: str | None) -> Path | None:
    """A local path from an image_uri (plain path or file:// URL); None for other schemes."""
    if uri is None or uri == "":
        return None
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        return None
    return Path(uri)


def load_image(uri: str | Path | None, max_pixels: int = 40_000_000, min_side: int = 8,
               draft_size: int | None = None) -> tuple[Image.Image | None, str]:
    """Decode one image to RGB, bounding its decoded size; returns (image or None, outcome).

    `draft_size` lets JPEG decode at a reduced scale (>= that many pixels a side), which is
    several times faster when the model wants a small input anyway.
    """
    if uri is None or uri == "":
        return None, NO_IMAGE
    path = resolve_uri(str(uri)) if not isinstance(uri, Path) else uri
    if path is None:
        return None, REMOTE
    if not path.exists():
        return None, MISSING
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        return None, UNKNOWN_FORMAT
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, TOO_LARGE
    except (OSError, ValueError):
        return None, UNREADABLE
    with im:
        width, height = im.size
        if width * height > max_pixels:
            return None, TOO_LARGE
        if min(width, height) < min_side:
            return None, TOO_SMALL
        fmt = im.format or ""
        mismatch = bool(fmt in _EXTENSIONS and path.suffix.lower() not in _EXTENSIONS[fmt])
        mode = im.mode
        try:
            if draft_size and fmt == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            rgb = _to_rgb(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None, TRUNCATED
    if mismatch:
        return rgb, OK_EXTENSION_MISMATCH
    if mode not in ("RGB", "L", "P", "RGBA", "LA"):
        return rgb, OK_CONVERTED
    return rgb, OK


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB copy; transparency is composited on white (catalogue images are shown on white)."""
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")


def read_bytes(uri: str | None) -> bytes:
    """The image file's bytes for content hashing; empty where there is no readable file."""
    path = resolve_uri(uri)
    if path is None:
        return b""
    try:
        return path.read_bytes()
    except OSError:
        return b""
