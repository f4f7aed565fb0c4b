"""npfrcnn's ops: one front door per op.

Each front door validates its input (``ValueError`` naming the argument and the fix), handles
empty input, and dispatches to a backend: ``"numpy"`` runs the readable reference,
``"cpu"`` the Numba kernel in ``npfrcnn.kernels.cpu`` and ``"cuda"`` the numba.cuda kernel in
``npfrcnn.kernels.cuda``. Every backend computes the same function.
"""

from npfrcnn.ops.conv import conv2d
from npfrcnn.ops.crop_and_resize import crop_and_pool, crop_and_resize
from npfrcnn.ops.layers import (
    batch_norm,
    dense,
    frozen_batch_norm,
    max_pool2d,
    mean,
    relu,
    relu6,
    softmax,
    torch_batch_norm,
)
from npfrcnn.ops.nms import batched_nms, nms, soft_nms
from npfrcnn.ops.resize import (
    BILINEAR_FORMULAS,
    resize_bilinear,
    resize_nearest,
    torch_bilinear_formula,
    torchvision_resize_size,
)
from npfrcnn.ops.roi_align import roi_align
from npfrcnn.ops.roi_pool import roi_pool
from npfrcnn.ops.topk import top_k
from npfrcnn.ops.torch_math import (
    exp_f64,
    fma32,
    libm_expf,
    sleef_expf_u10,
    torch_log2,
    torch_sigmoid,
    torch_softmax,
    torch_sqrt,
)
from npfrcnn.ops.torch_sort import torch_sort_desc, torch_topk
from npfrcnn.ops.tv_nms import torchvision_batched_nms, torchvision_nms

__all__ = [
    "BILINEAR_FORMULAS",
    "batch_norm",
    "batched_nms",
    "conv2d",
    "crop_and_pool",
    "crop_and_resize",
    "dense",
    "frozen_batch_norm",
    "max_pool2d",
    "mean",
    "nms",
    "relu",
    "relu6",
    "roi_align",
    "roi_pool",
    "soft_nms",
    "softmax",
    "top_k",
    "exp_f64",
    "fma32",
    "libm_expf",
    "resize_bilinear",
    "resize_nearest",
    "sleef_expf_u10",
    "torch_bilinear_formula",
    "torch_log2",
    "torch_sigmoid",
    "torch_softmax",
    "torch_sqrt",
    "torchvision_resize_size",
    "torch_sort_desc",
    "torch_topk",
    "torchvision_batched_nms",
    "torchvision_nms",
    "torch_batch_norm",
]
