"""ResNet v1 backbone (block1..block3) and tail (block4), as the workshop's ``workshop/resnet.py``.

The structure follows pipeline-spec 1.4 (TF-slim ``resnet_v1`` ported to ``tf.layers``):

* root: ``conv1`` 7x7/2 with explicit zero padding 3/3 then VALID, BN, ReLU; ``pool1`` a 3x3/2
  max-pool, VALID in the workshop (SAME in slim);
* bottleneck unit: ``conv1`` 1x1 -> BN -> ReLU, ``conv2`` 3x3 (carries the stride) -> BN -> ReLU,
  ``conv3`` 1x1 -> BN; shortcut is a 1x1 conv + BN when the channel count changes, otherwise
  ``x[:, ::s, ::s]``; output ``relu(shortcut + residual)``;
* a block's units have stride 1 except its last unit; ``stack_blocks_dense`` turns strides into
  dilation once the output stride is reached (block3's last unit runs at stride 1 for output
  stride 16);
* strided 3x3 convs pad explicitly (``pad_beg = (k_eff - 1) // 2``) then run VALID; stride-1
  convs use SAME (symmetric for odd kernels);
* BN at inference: ``x * inv + (beta - mean * inv)``, ``inv = rsqrt(var + eps) * gamma``.

Variable names (``weights/names.py``) follow ``tf.layers`` naming inside these scopes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from npfrcnn import ops
from npfrcnn.config import ModelConfig
from npfrcnn.ops.layers import affine_epilogue_, batch_norm_params

__all__ = [
    "UnitSpec",
    "backbone_units",
    "tail_units",
    "feature_map_shape",
    "run_base",
    "run_tail",
    "BN_PARAMS",
]

Array = npt.NDArray[np.float32]

#: Batch-norm tensors of every conv, in ``tf.layers.batch_normalization`` naming.
BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass(frozen=True)
class UnitSpec:
    """One bottleneck unit as it runs.

    ``prefix`` is its variable scope (``resnet_v1_101/block1/unit_1/bottleneck_v1``), ``stride``
    the stride it runs with after ``stack_blocks_dense`` and ``rate`` the dilation of its 3x3.
    """

    block: int
    unit: int
    prefix: str
    depth_in: int
    depth: int
    depth_bottleneck: int
    stride: int
    rate: int

    @property
    def has_shortcut_conv(self) -> bool:
        return self.depth_in != self.depth


def _block_units(config: ModelConfig, block: int, depth_in: int, strides: list[int]) -> list[
    tuple[int, int, int, int, int]
]:
    base = config.base_depths[block - 1]
    out = []
    for k, s in enumerate(strides, start=1):
        out.append((k, depth_in, 4 * base, base, s))
        depth_in = 4 * base
    return out


def backbone_units(config: ModelConfig) -> list[UnitSpec]:
    """Units of block1..block3 with the strides and rates ``stack_blocks_dense`` gives them.

    The nominal stride of block1..3 is 2 in the last unit. After the root (stride 4), a unit whose
    input is already at ``output_stride`` runs at stride 1 and multiplies the rate of later units
    instead (spec 1.4).
    """
    units: list[UnitSpec] = []
    current, rate = 4, 1
    depth_in = config.root_depth
    for block in (1, 2, 3):
        n = config.units_per_block[block - 1]
        nominal = [1] * (n - 1) + [2]
        for k, din, d, db, s in _block_units(config, block, depth_in, nominal):
            if current == config.output_stride:
                run_stride, run_rate = 1, rate
                rate *= s
            else:
                run_stride, run_rate = s, 1
                current *= s
            prefix = f"{config.scope}/block{block}/unit_{k}/bottleneck_v1"
            units.append(UnitSpec(block, k, prefix, din, d, db, run_stride, run_rate))
        depth_in = 4 * config.base_depths[block - 1]
    if current != config.output_stride:
        raise ValueError(
            f"output_stride {config.output_stride} is not reachable with 3 blocks (got {current})"
        )
    return units


def tail_units(config: ModelConfig) -> list[UnitSpec]:
    """block4 as ``resnet_v1_101_tail`` builds it: ``tail_stride`` in the last unit, rate 1."""
    n = config.units_per_block[3]
    nominal = [1] * (n - 1) + [config.tail_stride]
    units = []
    for k, din, d, db, s in _block_units(config, 4, config.block3_channels, nominal):
        prefix = f"{config.scope}/block4/unit_{k}/bottleneck_v1"
        units.append(UnitSpec(4, k, prefix, din, d, db, s, 1))
    return units


def _conv_out(n: int, k: int, s: int, pad: int) -> int:
    return (n + pad - k) // s + 1


def feature_map_shape(config: ModelConfig, height: int, width: int) -> tuple[int, int]:
    """``(H_f, W_f)`` of the block3 map for an input of ``height x width`` (no computation).

    conv1: 7x7/2 with padding 3/3; pool1: 3x3/2 VALID (``floor((n - 3) / 2) + 1``) or SAME
    (``ceil(n / 2)``); each strided unit: 3x3/2 with explicit padding (``ceil(n / 2)``).
    """
    dims = []
    for n in (height, width):
        n = _conv_out(n, 7, 2, 6)
        if config.pool1_padding == "VALID":
            if n < 3:
                raise ValueError(
                    f"image {height}x{width} is too small: pool1 needs at least 3 rows and "
                    "columns after conv1 (an image of at least 5x5 pixels)"
                )
            n = (n - 3) // 2 + 1
        else:
            n = -(-n // 2)
        for u in backbone_units(config):
            if u.stride > 1:
                n = -(-n // u.stride)
        dims.append(n)
    return dims[0], dims[1]


# NumPy forward ---------------------------------------------------------------------------


def _bn(x: Array, tensors: Mapping[str, np.ndarray], scope: str, eps: float) -> Array:
    p = scope + "/batch_normalization/"
    return ops.batch_norm(
        x,
        tensors[p + "moving_mean"],
        tensors[p + "moving_variance"],
        tensors[p + "beta"],
        tensors[p + "gamma"],
        variance_epsilon=eps,
    )


def _bn_act(
    x: Array,
    tensors: Mapping[str, np.ndarray],
    scope: str,
    eps: float,
    backend: str,
    residual: Array | None = None,
    relu: bool = True,
) -> Array:
    """``relu(residual + bn(x))`` (each part optional), TF's order of operations.

    On the ``cpu`` backend it is one parallel pass **in place** on ``x`` (a fresh conv output:
    :func:`npfrcnn.ops.layers.affine_epilogue_`), with the same bits as the separate NumPy
    passes ``numpy`` runs (float addition is commutative, so ``bn(x) + residual`` is
    ``residual + bn(x)``).
    """
    if backend != "cpu":
        r = _bn(x, tensors, scope, eps)
        if residual is not None:
            r = residual + r
        return ops.relu(r) if relu else r
    p = scope + "/batch_normalization/"
    a, b = batch_norm_params(
        tensors[p + "moving_mean"], tensors[p + "moving_variance"], tensors[p + "beta"],
        tensors[p + "gamma"], eps,
    )
    res = None if residual is None else np.ascontiguousarray(residual, dtype=np.float32)
    return affine_epilogue_(x, "frozen_bn", a, b, res, relu, backend="cpu")


def _conv_same(
    x: Array, kernel: np.ndarray, stride: int, rate: int, backend: str
) -> Array:
    """``conv2d_same``: SAME at stride 1, else explicit symmetric-ish zero pad and VALID."""
    k = kernel.shape[0]
    if stride == 1:
        if k == 1:
            return ops.conv2d(x, kernel, padding="VALID", backend=backend)
        return ops.conv2d(x, kernel, padding="SAME", dilations=rate, backend=backend)
    k_eff = k + (k - 1) * (rate - 1)
    beg = (k_eff - 1) // 2
    end = k_eff - 1 - beg
    xp = np.pad(x, ((0, 0), (beg, end), (beg, end), (0, 0)))
    return ops.conv2d(xp, kernel, strides=stride, padding="VALID", dilations=rate, backend=backend)


def _unit(
    x: Array, u: UnitSpec, tensors: Mapping[str, np.ndarray], config: ModelConfig, backend: str
) -> Array:
    eps = config.bn_epsilon
    p = u.prefix
    if u.has_shortcut_conv:
        # tf.layers.conv2d(1x1, strides=s, padding='same'): for a 1x1 kernel SAME pads nothing,
        # so this is x[:, ::s, ::s] followed by the 1x1 conv.
        xs = x[:, :: u.stride, :: u.stride] if u.stride > 1 else x
        sc = ops.conv2d(
            np.ascontiguousarray(xs), tensors[p + "/shortcut/conv2d/kernel"], padding="VALID",
            backend=backend,
        )
        shortcut = _bn_act(sc, tensors, p + "/shortcut", eps, backend, relu=False)
    else:
        shortcut = np.ascontiguousarray(x[:, :: u.stride, :: u.stride]) if u.stride > 1 else x
    s1 = u.stride if config.stride_in == "1x1" else 1
    s3 = u.stride if config.stride_in == "3x3" else 1
    xin = np.ascontiguousarray(x[:, ::s1, ::s1]) if s1 > 1 else x
    r = ops.conv2d(xin, tensors[p + "/conv1/conv2d/kernel"], padding="VALID", backend=backend)
    r = _bn_act(r, tensors, p + "/conv1", eps, backend)
    r = _conv_same(r, tensors[p + "/conv2/conv2d/kernel"], s3, u.rate, backend)
    r = _bn_act(r, tensors, p + "/conv2", eps, backend)
    r = ops.conv2d(r, tensors[p + "/conv3/conv2d/kernel"], padding="VALID", backend=backend)
    return _bn_act(r, tensors, p + "/conv3", eps, backend, residual=shortcut)


def run_base(
    x: Array, tensors: Mapping[str, np.ndarray], config: ModelConfig, backend: str = "cpu"
) -> Array:
    """block3 feature map of preprocessed images.

    Args:
        x: float32 ``[N, H, W, 3]`` mean-subtracted images.
        tensors: the weights by name (``weights/names.py``).

    Returns:
        float32 ``[N, H_f, W_f, 4 * base_depths[2]]`` (1024 channels for ResNet-101), stride
        ``output_stride``; ``(H_f, W_f) == feature_map_shape(config, H, W)``.
    """
    eps = config.bn_epsilon
    scope = config.scope
    net = _conv_same(x, tensors[scope + "/conv1/conv2d/kernel"], 2, 1, backend)
    net = _bn_act(net, tensors, scope + "/conv1", eps, backend)
    net = ops.max_pool2d(net, 3, 2, padding=config.pool1_padding)
    for u in backbone_units(config):
        net = _unit(net, u, tensors, config, backend)
    return net


def run_tail(
    x: Array, tensors: Mapping[str, np.ndarray], config: ModelConfig, backend: str = "cpu"
) -> Array:
    """block4 on pooled RoIs: float32 ``[R, 7, 7, C3]`` -> ``[R, 7, 7, 4 * base_depths[3]]``."""
    net = x
    for u in tail_units(config):
        net = _unit(net, u, tensors, config, backend)
    return net
