"""Converters from other weight layouts to the npfrcnn HDF5 format.

``checkpoint_to_hdf5``: a TensorFlow checkpoint in the workshop's naming (what the notebook
restores from ``checkpoint/fasterrcnn`` with ``tfe.restore_variables_on_create``). The name table
is the identity: the HDF5 datasets are named by the workshop's TF variable names
(``weights/names.py``), and TF stores conv kernels HWIO and dense kernels ``(in, out)``, which is
npfrcnn's layout, so no tensor is transposed. Training-only variables (``global_step``,
optimizer slots such as ``.../Momentum``, ``.../Adam``, ``.../ExponentialMovingAverage``) are
skipped and listed in the provenance; any other name the model does not use is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn.config import ModelConfig, workshop
from npfrcnn.weights.hdf5 import WeightsError, file_sha256, write
from npfrcnn.weights.names import expected_shapes

__all__ = ["checkpoint_to_hdf5", "TRAINING_ONLY", "infer_config"]

#: Checkpoint names that hold training state, not weights; skipped by the converter.
TRAINING_ONLY = re.compile(
    r"(^global_step$|^beta[12]_power(_\d+)?$|/(Momentum|Adam|Adam_1|RMSProp|RMSProp_1|"
    r"ExponentialMovingAverage|Adagrad)(_\d+)?$|^_CHECKPOINTABLE_OBJECT_GRAPH$)"
)


def _load_classes(path: str | os.PathLike[str]) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read classes file {os.fspath(path)!r}: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"classes file {os.fspath(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, list) or not data or not all(isinstance(c, str) for c in data):
        raise ValueError(
            f"classes file {os.fspath(path)!r} must hold a JSON list of class names "
            '(e.g. ["airplane", "apple", ...]), as the workshop\'s checkpoint/classes.json'
        )
    return data


def infer_config(shapes: dict[str, tuple[int, ...]], num_classes: int) -> ModelConfig:
    """The workshop config matching a checkpoint's variable shapes (scope and units per block).

    Reads the depth from the ``resnet_v1_{depth}`` scope and the units per block from the highest
    ``unit_k`` of each block; widths from the ``conv1`` and bottleneck kernels.
    """
    scopes = {n.split("/", 1)[0] for n in shapes if n.startswith("resnet_v1_")}
    if len(scopes) != 1:
        raise ValueError(
            f"expected one resnet_v1_<depth> scope in the checkpoint, found {sorted(scopes)}; "
            "pass config= explicitly"
        )
    scope = scopes.pop()
    units = []
    for b in (1, 2, 3, 4):
        ks = [
            int(m.group(1))
            for n in shapes
            if (m := re.match(rf"{scope}/block{b}/unit_(\d+)/", n))
        ]
        if not ks:
            raise ValueError(f"no {scope}/block{b} variables in the checkpoint")
        units.append(max(ks))
    root = shapes.get(f"{scope}/conv1/conv2d/kernel")
    if root is None:
        raise ValueError(f"{scope}/conv1/conv2d/kernel is missing from the checkpoint")
    bases = []
    for b in (1, 2, 3, 4):
        k = shapes.get(f"{scope}/block{b}/unit_1/bottleneck_v1/conv1/conv2d/kernel")
        if k is None:
            raise ValueError(f"{scope}/block{b}/unit_1/bottleneck_v1/conv1 is missing")
        bases.append(int(k[-1]))
    rpn = shapes.get("rpn/conv/kernel")
    u4 = (units[0], units[1], units[2], units[3])
    b4 = (bases[0], bases[1], bases[2], bases[3])
    config = workshop(
        num_classes=num_classes, units_per_block=u4, root_depth=int(root[-1]), base_depths=b4,
        rpn_depth=int(rpn[-1]) if rpn is not None else 512,
    )
    if config.scope != scope:
        raise ValueError(
            f"checkpoint scope {scope!r} does not match its units per block {units} "
            f"(which give {config.scope!r})"
        )
    return config


def _checkpoint_files(prefix: str) -> list[Path]:
    p = Path(prefix)
    return sorted(p.parent.glob(p.name + ".*"))


def checkpoint_to_hdf5(
    prefix: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    classes_json_path: str | os.PathLike[str],
    config: ModelConfig | None = None,
) -> dict[str, Any]:
    """Convert a workshop-naming TF checkpoint to an npfrcnn HDF5 weights file.

    Args:
        prefix: checkpoint prefix (``checkpoint/fasterrcnn``, i.e. without ``.index``).
        out_path: destination ``.h5`` (written atomically).
        classes_json_path: the checkpoint's ``classes.json`` (list of names, label order).
        config: the model configuration; default: the workshop profile with the depth, widths
            and class count read from the checkpoint.

    Returns:
        The provenance written (source, sha256 of the checkpoint files, skipped names).

    Raises:
        WeightsError: listing every missing, unexpected, mis-shaped or non-finite tensor at once.
        ValueError: an unreadable checkpoint or classes file.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    prefix = os.fspath(prefix)
    classes = _load_classes(classes_json_path)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # TF raises several types for a missing/corrupt checkpoint
        raise ValueError(
            f"cannot read TF checkpoint {prefix!r} ({type(e).__name__}: {e}); pass the prefix "
            "(e.g. checkpoint/fasterrcnn, without .index or .data-*)"
        ) from None
    shape_map = {n: tuple(int(d) for d in s) for n, s in reader.get_variable_to_shape_map().items()}
    skipped = sorted(n for n in shape_map if TRAINING_ONLY.search(n))
    names = {n: s for n, s in shape_map.items() if n not in skipped}
    if config is None:
        config = infer_config(names, len(classes))
    expected = expected_shapes(config)
    problems: list[str] = []
    # Explicit name table: checkpoint name -> HDF5 name (identity for the workshop naming; no
    # transposition: TF conv kernels are HWIO and dense kernels (in, out), as npfrcnn's).
    table = {name: name for name in expected}
    tensors: dict[str, np.ndarray] = {}
    for ckpt_name, h5_name in table.items():
        if ckpt_name not in names:
            problems.append(
                f"missing variable {ckpt_name!r} (expected shape {expected[h5_name]})"
            )
            continue
        value = np.asarray(reader.get_tensor(ckpt_name))
        if value.dtype != np.float32:
            problems.append(f"variable {ckpt_name!r} has dtype {value.dtype}, expected float32")
        tensors[h5_name] = value
    for n in sorted(set(names) - set(table)):
        problems.append(f"unexpected variable {n!r} {names[n]}: not part of the workshop model")
    if problems:
        raise WeightsError(prefix, problems)
    files = {f.name: file_sha256(f) for f in _checkpoint_files(prefix)}
    combined = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(files.items())).encode())
    provenance = {
        "source": f"TF checkpoint {Path(prefix).name} (workshop naming)",
        # One hash for the checkpoint: sha256 of the sorted "file:sha256" lines of its files.
        "source_sha256": combined.hexdigest(),
        "source_files_sha256": files,
        "classes_sha256": file_sha256(classes_json_path),
        "skipped_training_variables": skipped,
        "converter": "npfrcnn.weights.convert.checkpoint_to_hdf5",
    }
    write(out_path, config, classes, tensors, provenance)
    return provenance
