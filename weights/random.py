"""Random weights for tests and demos, in pure NumPy (no TensorFlow).

Scales are chosen so that activations stay finite and informative at ResNet-101 depth:

* conv kernels: He-normal, ``std = sqrt(2 / fan_in)``; ``conv1`` is further divided by 64 because
  its input is mean-subtracted pixels (standard deviation of tens, not 1);
* batch norm: ``gamma ~ 1 + 0.1 N(0,1)``, ``beta ~ 0.1 N(0,1)``, ``moving_mean ~ 0.1 N(0,1)``,
  ``moving_variance ~ 1 + 0.1 U(0,1)``, i.e. near the identity; the last BN of every residual
  branch (``conv3``) has ``gamma`` scaled by 0.2 so that 33 residual additions do not blow up;
* RPN: conv He-normal, objectness ``N(0, 0.01)`` and box ``N(0, 0.01)`` (the Faster R-CNN
  initialisation), biases small;
* R-CNN: classifier ``N(0, 0.01)``, box ``N(0, 0.001)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from npfrcnn.config import ModelConfig
from npfrcnn.weights.hdf5 import write
from npfrcnn.weights.names import expected_shapes

__all__ = ["random_weights", "make_random_model", "placeholder_classes"]


def placeholder_classes(n: int) -> list[str]:
    """``["class_0", ..., "class_{n-1}"]``."""
    return [f"class_{i}" for i in range(n)]


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 random tensors for every name of ``expected_shapes(config)``, reproducible by seed.

    The same ``(config, seed)`` always gives the same arrays (NumPy ``default_rng``).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    root = f"{config.scope}/conv1/conv2d/kernel"
    for name, shape in expected_shapes(config).items():
        leaf = name.rsplit("/", 1)[1]
        if name.startswith("rpn/") or name.startswith("rcnn/"):
            if leaf == "bias":
                a = 0.01 * rng.standard_normal(shape)
            elif name.startswith("rpn/conv/"):
                a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
            elif name.startswith("rpn/"):
                a = 0.01 * rng.standard_normal(shape)
            elif "classifier" in name:
                a = 0.01 * rng.standard_normal(shape)
            else:
                a = 0.001 * rng.standard_normal(shape)
        elif leaf == "kernel":
            a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
            if name == root:
                a = a / 64.0
        elif leaf == "gamma":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
            if "/conv3/" in name:
                a = 0.2 * a
        elif leaf == "moving_variance":
            a = 1.0 + 0.1 * rng.random(shape)
        else:  # beta, moving_mean
            a = 0.1 * rng.standard_normal(shape)
        out[name] = np.asarray(a, dtype=np.float32)
    return out


def make_random_model(
    path: str | os.PathLike[str],
    config: ModelConfig,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> str:
    """Write an HDF5 weights file with :func:`random_weights`; provenance says it is random.

    Args:
        path: destination ``.h5`` (written atomically).
        config: model configuration.
        seed: RNG seed.
        classes: class names; default ``class_0 .. class_{n-1}``.

    Returns:
        ``str(path)``.
    """
    names = list(classes) if classes is not None else placeholder_classes(config.num_classes)
    provenance = {
        "source": f"RANDOM weights (npfrcnn.weights.random_weights, seed={seed}); "
        "not trained: detections are meaningless",
        "source_sha256": None,
        "random": True,
        "seed": int(seed),
    }
    write(path, config, names, random_weights(config, seed), provenance)
    return str(path)
