"""npfrcnn.image.load: modes, EXIF orientation, bad files.

Every test file is generated here with Pillow (or by hand, byte by byte, for headers Pillow refuses
to write). Expected pixels are hand-worked from the file's contents and the documented rules, not
taken from our own output.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from npfrcnn.image import ImageError, load, to_rgb_array
from tests.helpers import assert_same

# A 2x3 RGB image with every pixel distinct, used for lossless round trips and orientation.
PIXELS = np.array(
    [
        [[10, 20, 30], [40, 50, 60], [70, 80, 90]],
        [[100, 110, 120], [130, 140, 150], [160, 170, 180]],
    ],
    dtype=np.uint8,
)


def _check_contract(a: np.ndarray) -> None:
    assert a.dtype == np.uint8
    assert a.ndim == 3 and a.shape[2] == 3
    assert a.flags.c_contiguous and a.flags.writeable


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR (8-bit RGB) claiming ``width`` x ``height``, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


# --- modes -----------------------------------------------------------------------------------


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "rgb.png"
    Image.fromarray(PIXELS).save(p)
    out = load(p)
    _check_contract(out)
    assert_same(out, PIXELS)


def test_str_path_accepted(tmp_path: Path) -> None:
    p = tmp_path / "rgb.png"
    Image.fromarray(PIXELS).save(p)
    assert_same(load(str(p)), PIXELS)


def test_mode_1_bilevel(tmp_path: Path) -> None:
    bits = np.array([[True, False, True], [False, False, True]])
    p = tmp_path / "bits.png"
    Image.fromarray(bits).convert("1").save(p)
    assert Image.open(p).mode == "1"
    want = np.repeat(np.where(bits, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)
    assert_same(load(p), want)


def test_mode_l_grayscale(tmp_path: Path) -> None:
    gray = np.array([[0, 1, 2], [127, 128, 255]], dtype=np.uint8)
    p = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(p)
    out = load(p)
    _check_contract(out)
    assert_same(out, np.stack([gray, gray, gray], axis=2))


def test_mode_la_alpha_dropped(tmp_path: Path) -> None:
    gray = np.array([[5, 50], [100, 200]], dtype=np.uint8)
    alpha = np.array([[0, 255], [128, 0]], dtype=np.uint8)  # fully transparent pixels too
    p = tmp_path / "la.png"
    Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA").save(p)
    assert Image.open(p).mode == "LA"
    assert_same(load(p), np.stack([gray, gray, gray], axis=2))


def test_mode_rgba_alpha_dropped_without_compositing(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = PIXELS
    rgba[..., 3] = [[0, 1, 128], [200, 254, 255]]  # transparent pixels keep their colour
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(p)
    assert Image.open(p).mode == "RGBA"
    assert_same(load(p), PIXELS)


def test_mode_p_palette_with_transparency(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9)
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(palette)
    p = tmp_path / "pal.png"
    img.save(p, transparency=1)  # index 1 (green) is transparent: still green, not composited
    opened = Image.open(p)
    assert opened.mode == "P" and opened.info.get("transparency") == 1
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    assert_same(load(p), colours[idx])


def test_mode_p_gif(tmp_path: Path) -> None:
    palette = [9, 8, 7, 200, 100, 50] + [0] * (768 - 6)
    idx = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(palette)
    p = tmp_path / "pal.gif"
    img.save(p)
    want = np.array([[[9, 8, 7], [200, 100, 50]], [[200, 100, 50], [200, 100, 50]]], np.uint8)
    assert_same(load(p), want)


def test_multi_frame_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (3, 2), c) for c in [(255, 0, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert getattr(Image.open(p), "n_frames", 1) == 2
    assert_same(load(p), np.full((2, 3, 3), [255, 0, 0], dtype=np.uint8))


def test_sixteen_bit_png_scaled_full_range(tmp_path: Path) -> None:
    # round(v * 255 / 65535) = round(v / 257), worked by hand:
    # 0 -> 0; 128/257 = 0.498 -> 0; 129/257 = 0.502 -> 1; 257 -> 1; 32896 = 128*257 -> 128;
    # 33024/257 = 128.498 -> 128; 33025/257 = 128.502 -> 129; 65535 -> 255.
    v = np.array([[0, 128, 129, 257], [32896, 33024, 33025, 65535]], dtype=np.uint16)
    want = np.array([[0, 0, 1, 1], [128, 128, 129, 255]], dtype=np.uint8)
    p = tmp_path / "g16.png"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load(p)
    _check_contract(out)
    assert_same(out, np.stack([want, want, want], axis=2))


def test_thirty_two_bit_int_tiff_clipped_then_scaled(tmp_path: Path) -> None:
    v = np.array([[-5, 0, 70000], [65535, 514, 32896]], dtype=np.int32)
    want = np.array([[0, 0, 255], [255, 2, 128]], dtype=np.uint8)  # clip to [0, 65535], /257
    p = tmp_path / "i32.tif"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode == "I"
    assert_same(load(p), np.stack([want, want, want], axis=2))


def test_big_endian_sixteen_bit(tmp_path: Path) -> None:
    # I;16B via to_rgb_array (Pillow writes no common format in this mode; build it in memory).
    v = np.array([[257, 65535]], dtype=">u2")
    img = Image.frombytes("I;16B", (2, 1), v.tobytes())
    assert_same(to_rgb_array(img), np.array([[[1, 1, 1], [255, 255, 255]]], dtype=np.uint8))


def test_cmyk_tiff(tmp_path: Path) -> None:
    # With K = 0, R = 255 - C, G = 255 - M, B = 255 - Y; K = 255 is black.
    cmyk = np.array(
        [[[0, 255, 255, 0], [255, 0, 0, 0]], [[0, 0, 0, 255], [0, 0, 0, 0]]], dtype=np.uint8
    )
    p = tmp_path / "cmyk.tif"
    Image.fromarray(cmyk, mode="CMYK").save(p)
    assert Image.open(p).mode == "CMYK"
    want = np.array([[[255, 0, 0], [0, 255, 255]], [[0, 0, 0], [255, 255, 255]]], np.uint8)
    assert_same(load(p), want)


def test_cmyk_jpeg_close(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load(p)
    _check_contract(out)
    # JPEG is lossy; a flat colour at quality 95 stays within a few levels (tolerance 8 levels).
    np.testing.assert_allclose(out.astype(int), np.full((16, 16, 3), [255, 0, 0]), atol=8)


def test_ycbcr_tiff_neutral_chroma_is_gray(tmp_path: Path) -> None:
    p = tmp_path / "ycc.tif"
    Image.new("YCbCr", (2, 2), (100, 128, 128)).save(p)
    assert Image.open(p).mode == "YCbCr"
    # JFIF: R = Y + 1.402 (Cr - 128), G = Y - 0.344 (Cb - 128) - 0.714 (Cr - 128), B = Y + 1.772
    # (Cb - 128): with Cb = Cr = 128 every channel equals Y.
    assert_same(load(p), np.full((2, 2, 3), 100, dtype=np.uint8))


def test_float_mode_rejected(tmp_path: Path) -> None:
    p = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32)).save(p)
    with pytest.raises(ImageError, match=r"float\.tif.*unsupported image mode 'F'.*convert"):
        load(p)


# --- EXIF orientation ------------------------------------------------------------------------


def _exif_expected(a: np.ndarray, orientation: int) -> np.ndarray:
    """The displayed image for EXIF orientation 1..8 (EXIF 2.3, tag 0x0112), by definition:
    the tag says where the stored 0th row / 0th column go."""
    return {
        1: a,
        2: a[:, ::-1],  # mirrored left-right
        3: a[::-1, ::-1],  # rotated 180
        4: a[::-1, :],  # mirrored top-bottom
        5: a.transpose(1, 0, 2),  # transposed (mirror about the main diagonal)
        6: np.rot90(a, k=-1),  # stored image must be turned 90 degrees clockwise
        7: np.rot90(a, k=1)[:, ::-1],  # transverse (mirror about the anti-diagonal)
        8: np.rot90(a, k=1),  # turned 90 degrees counter-clockwise
    }[orientation]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"
    Image.fromarray(PIXELS).save(p, exif=exif)
    out = load(p)
    _check_contract(out)
    assert_same(out, np.ascontiguousarray(_exif_expected(PIXELS, orientation)))


def test_exif_orientation_6_literal(tmp_path: Path) -> None:
    # Hand-worked: turning the 2x3 image 90 degrees clockwise puts its bottom-left pixel
    # top-left and gives a 3x2 image.
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "o6.png"
    Image.fromarray(PIXELS).save(p, exif=exif)
    want = np.array(
        [
            [[100, 110, 120], [10, 20, 30]],
            [[130, 140, 150], [40, 50, 60]],
            [[160, 170, 180], [70, 80, 90]],
        ],
        dtype=np.uint8,
    )
    assert_same(load(p), want)


def test_exif_orientation_jpeg_portrait(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = [255, 0, 0]  # left half red
    stored[:, 16:] = [0, 0, 255]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 8  # turn 90 degrees counter-clockwise: the right half goes to the top
    p = tmp_path / "portrait.jpg"
    Image.fromarray(stored).save(p, quality=95, exif=exif)
    out = load(p)
    assert out.shape == (32, 16, 3)
    # JPEG is lossy; block interiors at quality 95 stay within 16 levels (chroma subsampling
    # blurs only the edge rows, which are excluded).
    np.testing.assert_allclose(out[2:12].astype(int), np.full((10, 16, 3), [0, 0, 255]), atol=16)
    np.testing.assert_allclose(out[20:30].astype(int), np.full((10, 16, 3), [255, 0, 0]), atol=16)


# --- bad files -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=r"nope\.jpg: no such file"):
        load(p)


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a folder"):
        load(tmp_path)


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("hello, not a JPEG")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file"):
        load(p)


def test_image_error_is_value_error() -> None:
    assert issubclass(ImageError, ValueError)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_file_raises(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    full = tmp_path / f"full.{fmt}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    p = tmp_path / f"cut.{fmt}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{fmt}: the file is truncated or corrupt"):
        load(p)


def test_load_truncated_images_left_false() -> None:
    import npfrcnn.image  # noqa: F401  (importing must not relax Pillow's truncation check)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_zero_size_header(tmp_path: Path) -> None:
    # Pillow refuses a zero-width PNG at identification; the error still names the file and the
    # likely cause.
    p = tmp_path / "zero.png"
    p.write_bytes(_png_header_only(0, 5))
    with pytest.raises(ImageError, match=r"zero\.png: .*zero width or height"):
        load(p)


def test_zero_size_image_object() -> None:
    with pytest.raises(ImageError, match=r"empty\.png: the image has zero size \(0x3"):
        to_rgb_array(Image.new("RGB", (0, 3)), name="empty.png")


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_decompression_bomb_header_refused(tmp_path: Path, side: int) -> None:
    # 10,000^2 = 1e8 pixels is over the default limit (89,478,485), where Pillow only warns;
    # 20,000^2 is over twice the limit, where Pillow raises. Both are refused before decoding.
    p = tmp_path / f"bomb{side}.png"
    p.write_bytes(_png_header_only(side, side))
    want = rf"bomb{side}\.png: refused .*MAX_IMAGE_PIXELS = 89,478,485"
    with pytest.raises(ImageError, match=want):
        load(p)


def test_decompression_bomb_limit_is_pillows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "small.png"
    Image.new("RGB", (12, 12)).save(p)  # 144 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match=r"small\.png: refused.*= 100 pixels.*raise it"):
        load(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 144)  # exactly at the limit is allowed
    assert load(p).shape == (12, 12, 3)


# --- the workshop's photos -------------------------------------------------------------------

WORKSHOP_SIZES = {  # W x H from shared/data/README.md
    "bicycles.jpg": (960, 638),
    "cats.jpg": (970, 642),
    "horse.jpg": (736, 919),
    "kids.jpg": (960, 608),
    "kittens.png": (1200, 900),
    "woman.jpg": (731, 508),
}


@pytest.mark.parametrize("name", sorted(WORKSHOP_SIZES))
def test_workshop_photos(shared_dir: Path, name: str) -> None:
    p = shared_dir / "data" / "workshop-images" / name
    out = load(p)
    _check_contract(out)
    w, h = WORKSHOP_SIZES[name]
    assert out.shape == (h, w, 3)
    # None of the six has an EXIF orientation, so the result is the workshop's own loader,
    # `Image.open(path).convert('RGB')` (pipeline-spec 1.5).
    with Image.open(p) as img:
        assert img.getexif().get(0x0112, 1) == 1
        assert_same(out, np.asarray(img.convert("RGB")))


def test_workshop_kittens_rgba_alpha_dropped(shared_dir: Path) -> None:
    p = shared_dir / "data" / "workshop-images" / "kittens.png"
    with Image.open(p) as img:
        assert img.mode == "RGBA"
        rgba = np.asarray(img)
    assert_same(load(p), np.ascontiguousarray(rgba[..., :3]))
