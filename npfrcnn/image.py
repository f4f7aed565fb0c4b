"""Image loading: any file Pillow reads, as the uint8 RGB array the model takes.

:func:`load` is the one door. It reproduces the workshop's ``Image.open(path).convert('RGB')``
(pipeline-spec 1.5) for 8-bit images, and adds what a user-facing tool needs:

* **EXIF orientation** is applied first (``ImageOps.exif_transpose``), so a portrait photo taken
  with a rotated camera comes out upright, as image viewers show it. (The workshop did not do
  this; none of its six photos has an orientation tag, so the results agree on them.)
* **Modes.** ``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` go
  through Pillow's ``convert('RGB')``. Images with alpha (``LA``, ``PA``, ``RGBA``, palette
  images with a ``transparency`` entry) have the alpha channel **dropped without compositing**,
  exactly as ``convert('RGB')`` does: a transparent pixel keeps the colour stored under it.
  CMYK uses Pillow's plain formula (no ICC colour management).
* **16-bit and 32-bit integer grayscale** (``I;16*`` and ``I``, e.g. 16-bit PNG or TIFF) are
  scaled from the full 16-bit range to 8 bits, ``round(v * 255 / 65535)`` (``v`` clipped to
  ``[0, 65535]`` first), then repeated into three channels. Pillow's own ``convert('RGB')``
  would clip every value above 255 to white. The scale is fixed, not stretched per image, so
  brightness is kept. (Pillow decodes 16-bit *colour* PNGs to 8-bit RGB itself.)
  32-bit float images (mode ``F``) have no agreed range and are rejected.
* **Multi-frame files** (GIF, TIFF): the first frame.

Failures raise :class:`ImageError` (a ``ValueError``) whose message names the file and how to fix
it: a missing or unreadable file, a file Pillow does not recognise, a truncated or corrupt file
(the image is fully decoded, and Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay at its
default ``False``), a zero-size image, and a decompression bomb: an image with more pixels than
``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 by default) is refused before it is decoded.
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "load", "to_rgb_array", "IMAGE_EXTENSIONS"]

#: File extensions (lower case) that ``npfrcnn detect`` picks up when given a folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm",
)

_RGB_VIA_CONVERT = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageError(ValueError):
    """An image file that cannot be turned into an RGB array; the message names the file."""


def load(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """Read an image file as upright RGB.

    Args:
        path: any file Pillow can read (JPEG, PNG, BMP, GIF, TIFF, WebP, ...).

    Returns:
        uint8 ``[H, W, 3]`` RGB, C-contiguous, a fresh writable array. ``H`` and ``W`` are the
        sizes after EXIF orientation (a 90-degree orientation swaps them).

    Raises:
        ImageError: the file is missing, unreadable, not an image, truncated or corrupt, has zero
            width or height, has an unsupported mode (32-bit float), or has more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression-bomb guard).
    """
    name = os.fspath(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as img:
                _check_size(name, img.size)
                img.load()  # full decode now: truncation and corruption surface here
                upright = ImageOps.exif_transpose(img)
                return to_rgb_array(upright, name=name)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        limit = Image.MAX_IMAGE_PIXELS
        raise ImageError(
            f"{name}: refused as a possible decompression bomb ({e}); the limit is "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit:,} pixels. If you trust the file, raise it: "
            "`PIL.Image.MAX_IMAGE_PIXELS = <pixels>` in Python, or `npfrcnn detect "
            "--max-pixels <pixels>`"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file; check the path") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image file; pass the files in it") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied; make the file readable") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not an image file Pillow can read, or its header is corrupt (e.g. a zero "
            "width or height); check that the file opens in an image viewer, or re-save it as "
            "PNG or JPEG"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct.error) as e:
        # Pillow reports truncated data ("image file is truncated"), broken streams and corrupt
        # headers with these exception types.
        raise ImageError(
            f"{name}: the file is truncated or corrupt ({type(e).__name__}: {e}); re-download or "
            "re-export the image"
        ) from None



def _check_size(name: str, size: tuple[int, int]) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(
            f"{name}: the image has zero size ({w}x{h} pixels); there is nothing to detect, "
            "remove the file from the inputs"
        )


def to_rgb_array(img: Image.Image, *, name: str = "image") -> npt.NDArray[np.uint8]:
    """Convert an opened (and, if wanted, EXIF-transposed) Pillow image to uint8 RGB.

    The mode rules are those of :func:`load` (module docstring); ``name`` is used in errors.

    Returns:
        uint8 ``[H, W, 3]``, C-contiguous.

    Raises:
        ImageError: zero size or an unsupported mode.
    """
    _check_size(name, img.size)
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        gray = _sixteen_to_eight(np.asarray(img))  # [H,W]
        out = np.repeat(gray[:, :, None], 3, axis=2)  # [H,W,3]
    elif mode in _RGB_VIA_CONVERT:
        rgb = img if mode == "RGB" else img.convert("RGB")
        out = np.array(rgb, dtype=np.uint8)
    else:
        try:
            rgb = img.convert("RGB")
        except (ValueError, OSError):
            rgb = None
        if mode == "F" or rgb is None:
            raise ImageError(
                f"{name}: unsupported image mode {mode!r} (e.g. 32-bit float has no agreed "
                "range); convert it to 8-bit or 16-bit RGB or grayscale first"
            )
        out = np.array(rgb, dtype=np.uint8)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ImageError(f"{name}: Pillow returned shape {out.shape} for mode {mode!r}")
    return np.ascontiguousarray(out)


def _sixteen_to_eight(a: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Full-range 16-bit to 8-bit: ``round(clip(v, 0, 65535) * 255 / 65535)``, halves up.

    ``v * 255 / 65535 = v / 257``, so the rounded value is ``floor((2v + 257) / 514)``, in exact
    integer arithmetic.
    """
    v = np.clip(a.astype(np.int64), 0, 65535)
    return ((2 * v + 257) // 514).astype(np.uint8)
