"""Drawings of detections, legible from a 300-pixel thumbnail to a 4K photo.

:func:`draw_detections` outlines each box in its class colour and puts ``"label score"`` on a
filled tab. The line width and the font size scale with the image (``style_for``): the mean
side ``s = (W + H) / 2`` gives a line of ``max(1, round(0.003 s))`` pixels (Ultralytics'
rule) and a font of ``max(11, round(0.02 s))`` pixels, e.g. 1 px / 11 px at 300x300, 3 px /
20 px at 1000x1000, 9 px / 60 px at 3840x2160. The font is Pillow's built-in scalable font
(``ImageFont.load_default(size=...)``, Pillow >= 10.1 with FreeType); without it, Pillow's
fixed bitmap font.

:func:`drawing_format` and :func:`drawing_names` decide the file each drawing goes to: the
input's own format (``.jpg`` in, ``.jpg`` out) when Pillow can write it, PNG otherwise, or one
format for all (``--draw-format``); :func:`save_drawing` writes one atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn._io import atomic_write

__all__ = [
    "PALETTE", "DRAW_FORMATS", "draw_detections", "style_for", "drawing_format",
    "drawing_names", "save_drawing",
]

PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)

#: ``--draw-format`` choices: name -> (Pillow format, file extension).
DRAW_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "jpeg": ("JPEG", ".jpg"),
    "webp": ("WEBP", ".webp"), "bmp": ("BMP", ".bmp"), "tiff": ("TIFF", ".tif"),
}


@dataclass(frozen=True)
class Style:
    """Line width and font size in pixels for one image size."""

    line: int
    font_size: int


def style_for(width: int, height: int) -> Style:
    """The line width and font size for a ``width x height`` drawing (module docstring)."""
    s = (width + height) / 2
    return Style(line=max(1, round(0.003 * s)), font_size=max(11, round(0.02 * s)))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError, AttributeError):  # older Pillow, no FreeType
        return ImageFont.load_default()


def draw_detections(
    image: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, scores: np.ndarray,
    class_names: Sequence[str],
) -> Any:
    """An RGB ``PIL.Image`` of ``image`` with one labelled box per detection.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        boxes: ``[K, 4]`` ``(x1, y1, x2, y2)`` in pixels of ``image``.
        class_ids: ``[K]`` 0-based indices into ``class_names`` (an index outside it is drawn
            as its number).
        scores: ``[K]``.
        class_names: the model's class names.

    Each box is outlined in its class colour (``PALETTE[class_id % 20]``) with
    ``"label score"`` (score to 2 decimals) on a filled tab of the same colour above it (inside
    the box when there is no room above; moved left to stay in the image), in black or white,
    whichever reads better. Sizes follow :func:`style_for`.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    style = style_for(*img.size)
    font = _font(style.font_size)
    pad = max(2, style.font_size // 6)
    for box, cid, score in zip(boxes, class_ids, scores, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        colour = PALETTE[int(cid) % len(PALETTE)]
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=style.line)
        name = class_names[int(cid)] if 0 <= int(cid) < len(class_names) else str(int(cid))
        text = f"{name} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        ty = y1 - th if y1 - th >= 0 else y1
        tx = min(x1, max(0.0, img.size[0] - tw))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        brightness = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if brightness > 140 else (255, 255, 255)
        draw.text((tx + pad - left, ty + pad - top), text, fill=ink, font=font)
    return img


def drawing_format(path: str, forced: str | None = None) -> tuple[str, str]:
    """``(Pillow format, extension)`` of the drawing of input ``path``.

    ``forced`` (a :data:`DRAW_FORMATS` key) wins. Otherwise the input's format, by its
    extension, when Pillow can write it (the extension is kept as the input spells it);
    PNG for anything else (formats Pillow reads but cannot write, unknown extensions).
    """
    if forced is not None:
        return DRAW_FORMATS[forced.lower()]
    from PIL import Image

    ext = os.path.splitext(path)[1]
    fmt = Image.registered_extensions().get(ext.lower())
    if fmt is not None and fmt in Image.SAVE and fmt not in ("GIF", "PDF", "EPS", "PALM"):
        # GIF (and the document formats) would reduce the drawing to a palette: use PNG.
        return fmt, ext
    return "PNG", ".png"


def drawing_names(paths: Sequence[str], forced: str | None = None) -> list[tuple[str, str]]:
    """For each input, ``(file name, Pillow format)`` of its drawing, all names distinct.

    The name is ``<stem><ext>`` (:func:`drawing_format`); a later input whose name is taken
    (compared case-insensitively, as on macOS and Windows file systems) gets ``<stem>-2<ext>``,
    ``-3``, ... The names depend only on the list, so a resumed run draws to the same files.
    """
    used: set[str] = set()
    out: list[tuple[str, str]] = []
    for p in paths:
        fmt, ext = drawing_format(p, forced)
        stem = Path(p).stem or "image"
        name, k = f"{stem}{ext}", 1
        while name.casefold() in used:
            k += 1
            name = f"{stem}-{k}{ext}"
        used.add(name.casefold())
        out.append((name, fmt))
    return out


def save_drawing(picture: Any, target: str | os.PathLike[str], fmt: str) -> None:
    """Write a ``PIL.Image`` atomically in Pillow format ``fmt`` (JPEG at quality 95)."""
    options: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    with atomic_write(target, "wb") as f:
        picture.save(f, format=fmt, **options)
