"""Traces: every stage of a Faster R-CNN run, written to one file, and compared across systems.

* :mod:`npfrcnn.trace.schema`: the documented, versioned schema (stage names, shapes, layouts).
* :mod:`npfrcnn.trace.io`: :class:`TraceWriter` (streams stages to HDF5 or ``.npz``) and
  :func:`read_trace` (lazy, converts the declared layout to the canonical one).
* :func:`trace_images`: trace npfrcnn's own :class:`npfrcnn.FasterRCNN` (``npfrcnn trace``).
* Adapters for other systems, each an optional import (the framework is imported only when the
  adapter is called): :func:`from_torchvision` (forward hooks on a real torchvision model),
  :func:`from_onnxruntime` (an ONNX export with the stages as graph outputs) and
  :func:`from_tf` (the TensorFlow reference of the workshop profile).
* :mod:`npfrcnn.trace.compare`: ``npfrcnn compare`` (the table, the first stage out of
  tolerance, rounding or a real departure, the HTML report).
"""

from __future__ import annotations

from typing import Any

from npfrcnn.trace._npfrcnn import trace_image, trace_images
from npfrcnn.trace.io import ImageTrace, Trace, TraceError, TraceWriter, read_trace
from npfrcnn.trace.schema import STAGES, VERSION, stage_names

__all__ = [
    "STAGES", "VERSION", "ImageTrace", "Trace", "TraceError", "TraceWriter", "read_trace",
    "stage_names", "trace_image", "trace_images", "from_torchvision", "from_onnxruntime",
    "from_tf",
]


def from_torchvision(*args: Any, **kwargs: Any) -> Any:
    """Trace a real torchvision Faster R-CNN (:func:`.torchvision.from_torchvision`)."""
    from npfrcnn.trace.torchvision import from_torchvision as f

    return f(*args, **kwargs)


def from_onnxruntime(*args: Any, **kwargs: Any) -> Any:
    """Trace an ONNX export in ONNX Runtime (:func:`npfrcnn.trace.onnx.from_onnxruntime`)."""
    from npfrcnn.trace.onnx import from_onnxruntime as f

    return f(*args, **kwargs)


def from_tf(*args: Any, **kwargs: Any) -> Any:
    """Trace the TensorFlow reference of the workshop profile (:func:`npfrcnn.trace.tf.from_tf`)."""
    from npfrcnn.trace.tf import from_tf as f

    return f(*args, **kwargs)
