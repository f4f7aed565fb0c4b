"""torchvision's ``GeneralizedRCNNTransform`` at inference, for one image (torchvision-spec 2).

::

    x = uint8 image / 255                         (float32 division; ``to_tensor``)
    x = (x - mean) / std                          (float32, per channel; normalise first)
    x = bilinear resize to (int(h * s), int(w * s)), s = min(min_size / min(h, w),
                                                            max_size / max(h, w))   (float64)
    x = zero-pad bottom/right to multiples of size_divisible (zeros in normalised space)

The bilinear resize reproduces torch's CPU ``interpolate`` bit for bit for the code path the
torch run the config names (``torch_threads``, ``torch_cpu_capability``;
:func:`npfrcnn.ops.torch_bilinear_formula`, :func:`npfrcnn.ops.resize_bilinear`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from npfrcnn.config.fpn import FPNConfig

__all__ = ["TorchvisionTransform", "Preprocessed", "check_image"]

F32 = npt.NDArray[np.float32]


@dataclass
class Preprocessed:
    """The network input of one image.

    Attributes:
        x: float32 ``[1, Hp, Wp, 3]`` normalised, resized and padded.
        image_size: ``(h, w)`` of the resized image inside ``x`` (top-left aligned).
        original_size: ``(H, W)`` of the input image.
    """

    x: F32
    image_size: tuple[int, int]
    original_size: tuple[int, int]


def check_image(image: npt.ArrayLike) -> npt.NDArray[np.generic]:
    """The image as an array, or a ``ValueError`` saying what a model input must be."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype.kind not in "uif":
        raise ValueError(
            f"image must be a uint8 [H, W, 3] RGB array, got {img.dtype} array of shape "
            f"{img.shape}; load it with npfrcnn.image.load"
        )
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image must not be empty, got shape {img.shape}")
    return img


class TorchvisionTransform:
    """``GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std)`` (module doc)."""

    def __init__(self, config: FPNConfig, backend: str):
        self.config = config
        self.backend = backend

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` an image of ``height x width`` is resized to."""
        from npfrcnn.ops.resize import torchvision_resize_size

        return torchvision_resize_size(height, width, self.config.min_size, self.config.max_size)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The padded network input size for an image of ``height x width``."""
        h, w = self.resized_size(height, width)
        d = float(self.config.size_divisible)
        return int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)

    def normalize(self, image: npt.NDArray[np.generic]) -> F32:
        """``[H, W, 3]`` -> float32 ``(image / 255 - mean) / std`` (uint8), or ``(image - mean)
        / std`` for a float image already in [0, 1]."""
        if image.dtype == np.uint8:
            x = image.astype(np.float32) / np.float32(255.0)
        else:
            x = image.astype(np.float32)
        mean = np.asarray(self.config.image_mean, dtype=np.float32)
        std = np.asarray(self.config.image_std, dtype=np.float32)
        return (x - mean) / std

    def __call__(self, image: npt.ArrayLike) -> Preprocessed:
        img = check_image(image)
        from npfrcnn.ops.resize import resize_bilinear, torch_bilinear_formula

        h0, w0 = int(img.shape[0]), int(img.shape[1])
        x = self.normalize(img)
        oh, ow = self.resized_size(h0, w0)
        x = resize_bilinear(
            x[None], oh, ow, backend=self.backend,
            formula=torch_bilinear_formula(
                3, oh, ow, self.config.torch_threads, self.config.torch_cpu_capability
            ),
        )
        hp, wp = self.padded_size(h0, w0)
        out = np.zeros((1, hp, wp, 3), dtype=np.float32)
        out[:, :oh, :ow] = x
        return Preprocessed(out, (oh, ow), (h0, w0))
