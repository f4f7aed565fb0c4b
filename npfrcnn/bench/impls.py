"""The implementations ``npfrcnn bench`` runs: the built-in ones and a user's ``--impl``.

Built-ins, each used when it is installed and can run on the chosen device:

=====================  ================  ==================================================
name                   semantics         what
=====================  ================  ==================================================
``npfrcnn-numpy``      op's own          ``npfrcnn.ops.<op>(..., backend="numpy")``: the reference
``npfrcnn-cpu``        op's own          ``backend="cpu"``: the Numba kernels
``npfrcnn-cuda``       op's own          the numba.cuda kernels on device arrays
``npfrcnn-tv-numpy``,  torchvision       ``npfrcnn.ops.torchvision_nms`` / ``torchvision_batched_
``npfrcnn-tv-cpu``                       nms`` (nms, batched-nms)
``tensorflow``         tf                ``tf.image`` ops (batched-nms: a per-class loop of
                                         ``tf.image.non_max_suppression``: TF has no fused op
                                         with these semantics)
``torchvision``,       torchvision       ``torchvision.ops`` on CPU tensors / CUDA tensors
``torchvision-cuda``
=====================  ================  ==================================================

A user's implementation is ``MODULE:FUNCTION`` (``pkg.mod:fn``, or ``path/to/file.py:fn``;
``FUNCTION`` may be dotted, ``Class.method``), called with the argument convention of the
chosen semantics (:data:`npfrcnn.bench.specs.SIGNATURES`) on arrays of the chosen kind
(:mod:`npfrcnn.bench.arrays`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn import ops
from npfrcnn.bench import specs
from npfrcnn.bench.arrays import convert

__all__ = ["BUILTINS", "Impl", "UsageError", "builtins", "load_tensorflow", "user_impl"]


class UsageError(ValueError):
    """A bad ``--impl``, option or combination: reported before any work is done."""


@dataclass
class Impl:
    """One implementation of one op, ready to bind to inputs.

    Attributes:
        name: as shown in the table (``npfrcnn-cpu``, ``torchvision``, ``pkg.mod:fn``).
        op: the op's name.
        semantics: the reference it is checked against (``tf`` or ``torchvision``).
        convention: how it is called (a key of the op's ``conventions``).
        device: ``"cpu"`` or ``"cuda"``.
        kind: the array kind of its inputs (``numpy``, ``torch``, ``tensorflow``, ``numba``).
        fn: the function, called with the convention's positional arguments (plus ``extra``).
        threads: the thread pool it runs with (1 for single-threaded NumPy code).
        memory: how its peak memory is measured (see :mod:`npfrcnn.bench.timing`).
        extra: optional, given the converted arguments: more arguments to append (e.g. a
            preallocated device output), made once per input outside the timed calls.
        builtin: False for a user's ``--impl``.
    """

    name: str
    op: str
    semantics: str
    convention: str
    device: str
    kind: str
    fn: Callable[..., Any]
    threads: int = 1
    memory: str = "rss"
    extra: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None
    builtin: bool = True
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def bind(self, inputs: specs.Inputs) -> Callable[[], Any]:
        """A zero-argument call on ``inputs``, converted to this implementation's arrays."""
        conv = specs.get(self.op).conventions[self.convention]
        args = tuple(convert(a, self.kind, self.device) for a in conv.args(inputs))
        if self.extra is not None:
            args = args + self.extra(args)
        return partial(self.fn, *args)

    def result(self, raw: Any, inputs: specs.Inputs) -> Any:
        """The neutral form of ``raw`` (already NumPy) for comparison."""
        return specs.get(self.op).conventions[self.convention].result(raw, inputs)


# --------------------------------------------------------------------------------------------
# npfrcnn
# --------------------------------------------------------------------------------------------


def _npfrcnn_fn(op: str, backend: str) -> Callable[..., Any]:
    """npfrcnn's front door for ``op``, in the op's TF or torchvision-NHWC convention."""
    b = backend
    table: dict[str, Callable[..., Any]] = {
        "nms": lambda bx, s, m, t, st: ops.nms(bx, s, t, m, st, backend=b),
        "soft-nms": lambda bx, s, m, t, st, sig: ops.soft_nms(bx, s, m, t, st, sig, backend=b),
        "batched-nms": lambda bx, s, c, m, t, st: ops.batched_nms(bx, s, c, t, m, st, backend=b),
        "crop-and-resize": lambda im, bx, ix, cs, me, ev: ops.crop_and_resize(
            im, bx, ix, cs, me, ev, backend=b
        ),
        "crop-and-pool": lambda im, bx, ix, cs, ev: ops.crop_and_pool(
            im, bx, ix, cs, ev, backend=b
        ),
        "roi-align": lambda f, r, os_, sc, sr, al: ops.roi_align(
            f, r, os_, sc, sr, al, backend=b
        ),
        "roi-pool": lambda f, r, os_, sc: ops.roi_pool(f, r, os_, sc, backend=b),
    }
    return table[op]


def _npfrcnn_tv_fn(op: str, backend: str) -> Callable[..., Any]:
    if op == "nms":
        return lambda bx, s, t: ops.torchvision_nms(bx, s, t, backend=backend)
    return lambda bx, s, c, t: ops.torchvision_batched_nms(bx, s, c, t, backend=backend)


def _cuda_roi(op: str) -> tuple[Callable[..., Any], Callable[[tuple[Any, ...]], tuple[Any, ...]]]:
    """The CUDA RoI kernels called directly, writing into an output allocated once per input
    (numba's allocator does not cache, torch's does: this keeps allocation out of both)."""
    from npfrcnn.kernels.cuda import crop_and_resize as k_crop
    from npfrcnn.kernels.cuda import roi_align as k_align
    from npfrcnn.kernels.cuda import roi_pool as k_pool
    from npfrcnn.kernels.cuda._cuda import cuda

    def out_for(rows: int, h: int, w: int, c: int) -> tuple[Any, ...]:
        return (cuda.device_array((rows, h, w, c), np.float32),)

    if op == "crop-and-resize":
        def crop(im: Any, bx: Any, ix: Any, cs: Any, me: str, ev: float, out: Any) -> Any:
            return k_crop.crop_and_resize(im, bx, ix, cs[0], cs[1], me == "nearest", ev, out)

        return crop, lambda a: out_for(a[1].shape[0], a[3][0], a[3][1], a[0].shape[3])
    if op == "crop-and-pool":
        def pool(im: Any, bx: Any, ix: Any, cs: Any, ev: float, out: Any) -> Any:
            return k_crop.crop_and_pool(im, bx, ix, cs[0], cs[1], ev, out)

        return pool, lambda a: out_for(
            a[1].shape[0], a[3][0] // 2, a[3][1] // 2, a[0].shape[3]
        )
    if op == "roi-align":
        def align(f: Any, r: Any, os_: Any, sc: float, sr: int, al: bool, out: Any) -> Any:
            return k_align.roi_align(f, r, os_, sc, sr, al, out)

        return align, lambda a: out_for(a[1].shape[0], a[2][0], a[2][1], a[0].shape[3])

    def rpool(f: Any, r: Any, os_: Any, sc: float, out: Any) -> Any:
        return k_pool.roi_pool(f, r, os_, sc, out)

    return rpool, lambda a: out_for(a[1].shape[0], a[2][0], a[2][1], a[0].shape[3])


def _cuda_usable() -> str | None:
    """``None`` when npfrcnn's CUDA kernels can run here (a GPU, or the simulator), else why."""
    try:
        from npfrcnn.kernels.cuda._cuda import cuda
    except ImportError as e:
        return f"numba-cuda is not installed ({e}); pip install 'npfrcnn[cuda]'"
    if not cuda.is_available():
        return "no CUDA GPU is visible to numba"
    return None


def _npfrcnn_impls(op: str, device: str, threads: int) -> tuple[list[Impl], list[str]]:
    import numba

    threads = int(numba.get_num_threads())  # what set_threads gave Numba (capped by its max)
    spec = specs.get(op)
    own = spec.semantics[0]
    conv = "torchvision-nhwc" if own == "torchvision" else "tf"
    out: list[Impl] = []
    notes: list[str] = []
    if device == "cpu":
        out.append(Impl("npfrcnn-numpy", op, own, conv, "cpu", "numpy", _npfrcnn_fn(op, "numpy"),
                        description="npfrcnn's NumPy reference"))
        out.append(Impl("npfrcnn-cpu", op, own, conv, "cpu", "numpy", _npfrcnn_fn(op, "cpu"),
                        threads=threads, description="npfrcnn's Numba kernels"))
        if op in ("nms", "batched-nms"):
            for backend in ("numpy", "cpu"):
                out.append(Impl(
                    f"npfrcnn-tv-{backend}", op, "torchvision", "torchvision", "cpu", "numpy",
                    _npfrcnn_tv_fn(op, backend), threads=threads if backend == "cpu" else 1,
                    description=f"npfrcnn.ops.torchvision_{op.replace('-', '_')}, "
                    f"backend={backend!r}",
                ))
        return out, notes
    why = _cuda_usable()
    if why:
        return out, [f"npfrcnn-cuda: {why}"]
    if op == "soft-nms":
        return out, ["npfrcnn-cuda: soft-NMS has no CUDA kernel"]
    if op in ("nms", "batched-nms"):
        out.append(Impl("npfrcnn-cuda", op, own, conv, "cuda", "numba", _npfrcnn_fn(op, "cuda"),
                        memory="none", description="npfrcnn's CUDA kernels (front door)"))
    else:
        fn, extra = _cuda_roi(op)
        out.append(Impl("npfrcnn-cuda", op, own, conv, "cuda", "numba", fn, memory="none",
                        extra=extra, description="npfrcnn's CUDA kernels, preallocated output"))
    return out, notes


# --------------------------------------------------------------------------------------------
# TensorFlow
# --------------------------------------------------------------------------------------------


def load_tensorflow(threads: int, device: str) -> Any:
    """Import TensorFlow with ``threads`` intra-op threads (and the GPU hidden for the CPU)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    first = "tensorflow" not in sys.modules
    if first and importlib.util.find_spec("torchvision") is not None:
        # torchvision imported after TensorFlow crashes the process (TF 2.21, torchvision 0.29
        # wheels: a segmentation fault while torchvision loads its ops); imported first, both
        # work in one process.
        import torchvision  # noqa: F401
    import tensorflow as tf

    if first:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
            if device == "cpu":
                tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF already started in this process: keep its pools
            pass
    return tf


def _tf_threads(tf: Any) -> int:
    n = int(tf.config.threading.get_intra_op_parallelism_threads())
    return n if n > 0 else (os.cpu_count() or 1)


def _tf_batched(tf: Any) -> Callable[..., Any]:
    def batched(bx: Any, s: Any, c: Any, m: int, t: float, st: float) -> Any:
        classes = c.numpy()
        parts = [np.zeros(0, np.int64)]
        for k in np.unique(classes):
            members = np.flatnonzero(classes == k)
            sel = tf.image.non_max_suppression(
                tf.gather(bx, members), tf.gather(s, members), m, t, st
            )
            parts.append(members[sel.numpy()])
        keep = np.concatenate(parts)
        score = s.numpy()[keep] + np.float32(0.0)  # -0.0 and 0.0 tie, as in TF's NMS
        return keep[np.lexsort((keep, -score))]

    return batched


def _tf_impls(op: str, device: str, threads: int) -> tuple[list[Impl], list[str]]:
    if "tf" not in specs.get(op).semantics:
        return [], []
    try:
        tf = load_tensorflow(threads, device)
    except ImportError:
        return [], ["tensorflow: not installed"]
    if device == "cuda" and not tf.config.list_logical_devices("GPU"):
        return [], ["tensorflow: TensorFlow sees no GPU (tensorflow-cpu?)"]
    img = tf.image
    table: dict[str, Callable[..., Any]] = {
        "nms": img.non_max_suppression,
        "soft-nms": img.non_max_suppression_with_scores,
        "batched-nms": _tf_batched(tf),
        "crop-and-resize": img.crop_and_resize,
        "crop-and-pool": lambda im, bx, ix, cs, ev: tf.nn.max_pool2d(
            img.crop_and_resize(im, bx, ix, cs, "bilinear", ev), 2, 2, "VALID"
        ),
    }
    fn = table[op]
    if device == "cuda":
        inner = fn

        def fn(*args: Any) -> Any:
            with tf.device("/GPU:0"):
                return inner(*args)

    name = "tensorflow" if device == "cpu" else "tensorflow-cuda"
    desc = "per-class loop of tf.image.non_max_suppression" if op == "batched-nms" else ""
    return [Impl(name, op, "tf", "tf", device, "tensorflow", fn, threads=_tf_threads(tf),
                 memory="rss" if device == "cpu" else "none", description=desc)], []


# --------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------


def _torchvision_impls(op: str, device: str, threads: int) -> tuple[list[Impl], list[str]]:
    if "torchvision" not in specs.get(op).semantics:
        return [], []
    try:
        import torch
        import torchvision
    except ImportError:
        return [], ["torchvision: torch or torchvision is not installed"]
    if device == "cuda" and not torch.cuda.is_available():
        return [], ["torchvision-cuda: torch sees no CUDA GPU"]
    torch.set_num_threads(threads)
    tv = torchvision.ops
    table: dict[str, Callable[..., Any]] = {
        "nms": tv.nms,
        "batched-nms": tv.batched_nms,
        "roi-align": tv.roi_align,
        "roi-pool": tv.roi_pool,
    }
    name = "torchvision" if device == "cpu" else "torchvision-cuda"
    return [Impl(name, op, "torchvision", "torchvision", device, "torch", table[op],
                 threads=int(torch.get_num_threads()),
                 memory="rss" if device == "cpu" else "torch")], []


#: Built-in families, in table order, and the names each can give.
BUILTINS = {
    "npfrcnn": ("npfrcnn-numpy", "npfrcnn-cpu", "npfrcnn-tv-numpy", "npfrcnn-tv-cpu",
                "npfrcnn-cuda"),
    "tensorflow": ("tensorflow", "tensorflow-cuda"),
    "torchvision": ("torchvision", "torchvision-cuda"),
}
BUILTIN_NAMES = tuple(n for names in BUILTINS.values() for n in names)


def builtins(
    op: str, device: str, threads: int, only: list[str] | None = None
) -> tuple[list[Impl], list[str]]:
    """The built-in implementations of ``op`` available on ``device``, and notes on the ones
    that are not (not installed, no GPU). ``only`` restricts them to those names (or families:
    ``npfrcnn``, ``tensorflow``, ``torchvision``); TF and torch are imported only if needed."""
    wanted: set[str] | None = None
    if only is not None:
        wanted = set()
        for w in only:
            wanted.update(BUILTINS.get(w, (w,)))
    impls: list[Impl] = []
    notes: list[str] = []
    loaders = {"npfrcnn": _npfrcnn_impls, "tensorflow": _tf_impls,
               "torchvision": _torchvision_impls}
    for family, loader in loaders.items():
        if wanted is not None and not wanted.intersection(BUILTINS[family]):
            continue
        found, why = loader(op, device, threads)
        impls += [i for i in found if wanted is None or i.name in wanted]
        notes += why
    return impls, notes


# --------------------------------------------------------------------------------------------
# A user's implementation
# --------------------------------------------------------------------------------------------


def _import(target: str) -> Any:
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"--impl {target}: no such file")
        name = f"_npfrcnn_bench_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"--impl {target}: cannot load it as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def user_impl(
    text: str, op: str, semantics: str, device: str, kind: str, threads: int
) -> Impl:
    """The implementation named ``MODULE:FUNCTION`` (or ``NAME=MODULE:FUNCTION``)."""
    label, _, target = text.rpartition("=") if "=" in text else ("", "", text)
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"--impl {text!r}: expected MODULE:FUNCTION, e.g. mykernels.nms:nms or "
            "path/to/kernels.py:roi_align"
        )
    try:
        obj: Any = _import(module_name)
    except UsageError:
        raise
    except Exception as e:  # anything the module raises on import: report it, do no work
        raise UsageError(f"--impl {text}: importing {module_name} failed: "
                         f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"--impl {text}: {module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UsageError(f"--impl {text}: {attr} is not callable")
    return Impl(label or target, op, semantics, semantics, device, kind, obj, threads=threads,
                memory="rss" if device == "cpu" else ("torch" if kind == "torch" else "none"),
                builtin=False, description=f"user implementation, {semantics} convention")
