"""torchvision's ResNet body and feature pyramid, NHWC (torchvision-spec sections 3.1 to 3.4).

:class:`ResNetBody` is ``torchvision.models.resnet.ResNet`` up to ``layer4`` ("ResNet v1.5"):

* stem: ``conv1`` 7x7/2 pad 3, no bias -> norm -> ReLU -> ``MaxPool2d(3, 2, padding=1)``
  (the padding acts as ``-inf``);
* ``Bottleneck``: 1x1 -> norm -> ReLU -> 3x3 **with the stride**, pad 1 -> norm -> ReLU -> 1x1 ->
  norm, ``+ identity`` (``downsample`` = 1x1 conv with the stride + norm in block 0 of every
  layer) -> ReLU;
* the norm is ``FrozenBatchNorm2d`` (two roundings) or ``nn.BatchNorm2d`` in eval (FMAs), as the
  config says (:func:`npfrcnn.ops.frozen_batch_norm`, :func:`npfrcnn.ops.torch_batch_norm`).

It returns ``C2..C5`` (``layer1..layer4``), strides 4, 8, 16 and 32 of the padded input.

:class:`FPN` is ``torchvision.ops.FeaturePyramidNetwork`` with ``LastLevelMaxPool``: inner 1x1
convs, a top-down pass with nearest upsampling to each lateral's size, 3x3 output convs (with
bias; or without bias then BN for v2), and ``pool = P5[:, ::2, ::2]``. Levels are named as
torchvision names them: ``'0', '1', '2', '3', 'pool'``.

Weights are read from a name -> array mapping named by torchvision's state-dict keys,
converted to HWIO at conversion (:mod:`npfrcnn.weights.torchvision_names`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from npfrcnn import ops
from npfrcnn.config.fpn import FPNConfig
from npfrcnn.ops.layers import (
    affine_epilogue_,
    apply_fma_affine,
    frozen_batch_norm_params,
    max_pool_3x3_s2_p1,
    torch_batch_norm_params,
)
from npfrcnn.ops.resize import resize_nearest

__all__ = ["Norm", "ResNetBody", "FPN", "LEVELS", "body_block_specs"]

F32 = npt.NDArray[np.float32]

#: FPN output names, highest resolution first (torchvision's ``OrderedDict`` keys).
LEVELS = ("0", "1", "2", "3", "pool")


class Norm:
    """A channels-last norm layer bound once to its tensors (``FrozenBatchNorm2d`` or BN eval).

    Args:
        kind: ``"frozen_bn"`` (``x * scale + shift``, two roundings) or ``"batch_norm"``
            (``fma(x, alpha, beta)``).
        tensors: the weights; ``prefix + "weight"``, ``"bias"``, ``"running_mean"``,
            ``"running_var"`` are read.
        prefix: the layer's state-dict prefix, ending in ``.``.
        eps: the layer's epsilon.
    """

    def __init__(self, kind: str, tensors: Mapping[str, np.ndarray], prefix: str, eps: float):
        w, b, rm, rv = (
            tensors[prefix + k] for k in ("weight", "bias", "running_mean", "running_var")
        )
        self.kind = kind
        params = frozen_batch_norm_params if kind == "frozen_bn" else torch_batch_norm_params
        self.a, self.b = params(w, b, rm, rv, eps)

    def __call__(self, x: F32) -> F32:
        """Normalise ``x`` **in place** (callers pass a fresh conv output) and return it."""
        if self.kind == "frozen_bn":
            x *= self.a
            x += self.b
            return x
        return apply_fma_affine(x, self.a, self.b)

    def fused_(
        self, x: F32, backend: str, residual: F32 | None = None, relu: bool = False
    ) -> F32:
        """``relu(norm(x) + residual)`` **in place**, as separate passes compute it, bit for bit.

        ``backend="cpu"`` makes it one parallel pass (:func:`npfrcnn.ops.affine_epilogue_`).
        """
        kind = "frozen_bn" if self.kind == "frozen_bn" else "fma64"
        return affine_epilogue_(x, kind, self.a, self.b, residual, relu, backend)


@dataclass(frozen=True)
class BlockSpec:
    """One ``Bottleneck`` of the body: its state-dict prefix, widths and stride."""

    prefix: str  # backbone.body.layer2.0.
    c_in: int
    width: int
    c_out: int
    stride: int
    downsample: bool


def body_block_specs(config: FPNConfig) -> list[list[BlockSpec]]:
    """``layer1..layer4``'s bottlenecks, as torchvision's ``ResNet._make_layer`` builds them."""
    layers: list[list[BlockSpec]] = []
    c_in = 64
    for i, (n, width, c_out) in enumerate(
        zip(config.units_per_block, config.bottleneck_widths, config.body_channels, strict=True)
    ):
        stride = 1 if i == 0 else 2
        blocks = []
        for b in range(n):
            blocks.append(
                BlockSpec(
                    f"backbone.body.layer{i + 1}.{b}.", c_in, width, c_out,
                    stride if b == 0 else 1, b == 0 and (stride != 1 or c_in != c_out),
                )
            )
            c_in = c_out
        layers.append(blocks)
    return layers


class ResNetBody:
    """torchvision's ResNet ``conv1 .. layer4`` on NHWC input (module docstring).

    ``__call__(x [1, Hp, Wp, 3]) -> [C2, C3, C4, C5]``.
    """

    def __init__(self, config: FPNConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.config = config
        self.backend = backend
        self.t = tensors
        eps = config.bn_eps
        self.norms: dict[str, Norm] = {}
        self.layers = body_block_specs(config)
        bn_prefixes = ["backbone.body.bn1."]
        for layer in self.layers:
            for blk in layer:
                bn_prefixes += [blk.prefix + f"bn{k}." for k in (1, 2, 3)]
                if blk.downsample:
                    bn_prefixes.append(blk.prefix + "downsample.1.")
        for p in bn_prefixes:
            self.norms[p] = Norm(config.body_norm, tensors, p, eps)

    def _conv(self, x: F32, name: str, stride: int = 1, pad: int = 0) -> F32:
        return ops.conv2d(
            x, self.t[name], strides=stride, padding=((pad, pad), (pad, pad)),
            backend=self.backend,
        )

    def _block(self, x: F32, blk: BlockSpec) -> F32:
        p, be = blk.prefix, self.backend
        out = self.norms[p + "bn1."].fused_(self._conv(x, p + "conv1.weight"), be, relu=True)
        out = self.norms[p + "bn2."].fused_(
            self._conv(out, p + "conv2.weight", blk.stride, 1), be, relu=True
        )
        if blk.downsample:
            identity = self.norms[p + "downsample.1."].fused_(
                self._conv(x, p + "downsample.0.weight", blk.stride), be
            )
        else:
            identity = x
        # bn3, + identity, ReLU
        return self.norms[p + "bn3."].fused_(
            self._conv(out, p + "conv3.weight"), be, residual=identity, relu=True
        )

    def stem(self, x: F32) -> F32:
        """conv1 -> norm -> ReLU -> 3x3/2 max-pool with padding 1 (``-inf``)."""
        net = self.norms["backbone.body.bn1."].fused_(
            self._conv(x, "backbone.body.conv1.weight", 2, 3), self.backend, relu=True
        )
        return max_pool_3x3_s2_p1(net, backend=self.backend)

    def __call__(self, x: F32) -> list[F32]:
        net = self.stem(x)
        outs = []
        for layer in self.layers:
            for blk in layer:
                net = self._block(net, blk)
            outs.append(net)
        return outs


class FPN:
    """``FeaturePyramidNetwork`` + ``LastLevelMaxPool`` (module docstring).

    ``__call__([C2, C3, C4, C5]) -> {'0': P2, '1': P3, '2': P4, '3': P5, 'pool': P6}``.
    """

    def __init__(self, config: FPNConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.config = config
        self.backend = backend
        self.t = tensors
        self.norms: dict[str, Norm] = {}
        if config.fpn_norm == "batch_norm":
            for kind in ("inner_blocks", "layer_blocks"):
                for i in range(4):
                    p = f"backbone.fpn.{kind}.{i}.1."
                    self.norms[p] = Norm("batch_norm", tensors, p, 1e-5)

    def _block(self, x: F32, kind: str, i: int) -> F32:
        p = f"backbone.fpn.{kind}.{i}."
        pad = 1 if kind == "layer_blocks" else 0
        bias = self.t.get(p + "0.bias")
        out = ops.conv2d(
            x, self.t[p + "0.weight"], bias, padding=((pad, pad), (pad, pad)),
            backend=self.backend,
        )
        if self.config.fpn_norm == "batch_norm":
            out = self.norms[p + "1."].fused_(out, self.backend)
        return out

    def __call__(self, body: list[F32]) -> dict[str, F32]:
        last = self._block(body[3], "inner_blocks", 3)
        results = [self._block(last, "layer_blocks", 3)]
        for i in (2, 1, 0):
            lateral = self._block(body[i], "inner_blocks", i)
            top_down = resize_nearest(
                last, lateral.shape[1], lateral.shape[2], backend=self.backend
            )
            last = affine_epilogue_(lateral, "none", residual=top_down, backend=self.backend)
            results.insert(0, self._block(last, "layer_blocks", i))
        pool = np.ascontiguousarray(results[-1][:, ::2, ::2])  # max_pool2d(k=1, s=2)
        return dict(zip(LEVELS, [*results, pool], strict=True))
