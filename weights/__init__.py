"""Weights: the HDF5 format, the name table, random weights, converters and the TF reference.

``tf_reference`` and ``convert`` import TensorFlow inside their functions only; nothing here is
needed by the inference path except :func:`read`.
"""

from npfrcnn.weights.hdf5 import (
    FORMAT,
    FORMAT_VERSION,
    WeightsError,
    WeightsFile,
    check_tensors,
    external_data,
    file_sha256,
    inspect,
    read,
    tensors_sha256,
    write,
)
from npfrcnn.weights.names import expected_shapes
from npfrcnn.weights.random import make_random_model, placeholder_classes, random_weights
from npfrcnn.weights.torch_checkpoint import Checkpoint, CheckpointError, read_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "WeightsError",
    "WeightsFile",
    "check_tensors",
    "expected_shapes",
    "external_data",
    "file_sha256",
    "inspect",
    "make_random_model",
    "placeholder_classes",
    "random_weights",
    "read",
    "read_checkpoint",
    "tensors_sha256",
    "write",
]
