"""RoI poolers: torchvision's ``MultiScaleRoIAlign`` (torchvision-spec section 7).

Scales (``MultiScaleRoIAlign._setup_scales`` / ``_infer_scale``): for each pooled level,
``2 ** round(log2(f32(fh / H0)))`` from the feature height ``fh`` and the resized (unpadded)
image height ``H0`` only (float64 division, float32 log2, round half to even).
``k_min = int(-log2(scale_0))``, ``k_max = int(-log2(scale_last))``.

Level mapper (``LevelMapper``), float32::

    lvl = floor(canonical_level + log2(sqrt(area) / canonical_scale) + f32(1e-6))
    level = int(clamp(lvl, k_min, k_max)) - k_min

Each RoI is pooled with ``roi_align(feature_level, rois, output_size, scale, sampling_ratio,
aligned=False)`` (:func:`npfrcnn.ops.roi_align`, torchvision's CPU kernel transcribed).

Difference from torchvision, on purpose: torchvision computes the scales at its first call and
caches them on the module, so one model instance keeps the first image's scales for every later
image. npfrcnn infers them for each image, which is what a fresh torchvision model computes for
that image; the two differ only for images whose resized height makes ``Hp / h > sqrt(2)``
(aspect ratios beyond about 20:1) after another image was run first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from npfrcnn import ops
from npfrcnn.config.fpn import FPNConfig
from npfrcnn.ops.torch_math import torch_log2, torch_sqrt

__all__ = ["MultiScaleRoIAlign", "PooledRoIs", "infer_scale"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: The levels the box head pools from (``featmap_names``).
POOLED_LEVELS = ("0", "1", "2", "3")


def infer_scale(feature_height: int, image_height: int) -> float:
    """``_infer_scale``: the power of two nearest (in log2) to ``feature_height / image_height``."""
    approx = float(feature_height) / float(image_height)
    lg = float(torch_log2(np.asarray([approx], dtype=np.float32))[0])
    return float(2.0 ** float(np.round(np.float32(lg))))


@dataclass
class PooledRoIs:
    """Pooled RoIs of one image: ``features [P, S, S, C]`` and each RoI's ``levels [P]``."""

    features: F32
    levels: I64
    scales: tuple[float, ...]


class MultiScaleRoIAlign:
    """``MultiScaleRoIAlign(['0', '1', '2', '3'], output_size, sampling_ratio)`` (module doc)."""

    def __init__(self, config: FPNConfig, backend: str):
        self.config = config
        self.backend = backend

    def scales(self, features: Mapping[str, F32], image_size: tuple[int, int]) -> list[float]:
        return [infer_scale(int(features[n].shape[1]), int(image_size[0])) for n in POOLED_LEVELS]

    def levels(self, boxes: F32, scales: list[float]) -> I64:
        """``LevelMapper``: the pooled level (0-based, into ``POOLED_LEVELS``) of each box."""
        k_min = int(-float(torch_log2(np.asarray([scales[0]], np.float32))[0]))
        k_max = int(-float(torch_log2(np.asarray([scales[-1]], np.float32))[0]))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        s = torch_sqrt(area)
        cfg = self.config
        lg = torch_log2(s / np.float32(cfg.canonical_scale))
        lvl = np.floor((np.float32(cfg.canonical_level) + lg) + np.float32(1e-6))
        lvl = np.clip(lvl, np.float32(k_min), np.float32(k_max))
        return lvl.astype(np.int64) - k_min

    def __call__(
        self, features: Mapping[str, F32], boxes: npt.ArrayLike, image_size: tuple[int, int]
    ) -> PooledRoIs:
        cfg = self.config
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scales = self.scales(features, image_size)
        levels = self.levels(b, scales)
        c = int(features[POOLED_LEVELS[0]].shape[3])
        size = cfg.roi_output_size
        out = np.zeros((b.shape[0], size, size, c), dtype=np.float32)
        rois = np.concatenate([np.zeros((b.shape[0], 1), np.float32), b], axis=1)
        for li, name in enumerate(POOLED_LEVELS):
            idx = np.flatnonzero(levels == li)
            if idx.size == 0:
                continue
            out[idx] = ops.roi_align(
                features[name], rois[idx], size, scales[li], cfg.sampling_ratio, aligned=False,
                backend=self.backend,
            )
        return PooledRoIs(out, levels, tuple(scales))
