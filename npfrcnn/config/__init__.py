"""Model configurations: one frozen dataclass per architecture, and the named profiles.

* :class:`ModelConfig` (:mod:`npfrcnn.config.c4`): the ResNet-C4 family; the ``workshop``
  profile reproduces the Tryolabs workshop network.
* :class:`FPNConfig` (:mod:`npfrcnn.config.fpn`): torchvision's ResNet + FPN Faster R-CNN; the
  profiles ``torchvision-r50-fpn``, ``torchvision-r50-fpn-v2`` and ``torchvision-r101-fpn``
  (:mod:`npfrcnn.config.profiles.torchvision`).
* :class:`Detectron2Config` (:mod:`npfrcnn.config.detectron2`): Detectron2's Faster R-CNN, C4
  and FPN; the profiles ``detectron2-r101-c4``, ``detectron2-r50-fpn`` and
  ``detectron2-r101-fpn`` (:mod:`npfrcnn.config.profiles.detectron2`).

A config is pure data and round-trips through JSON (it is stored in every weights file);
:func:`config_from_json` reads every kind: an FPN config carries ``"architecture":
"resnet_fpn"``, a Detectron2 config ``"architecture": "detectron2"``, and a JSON object without
``architecture`` is a C4 config (every weights file written before the FPN profiles existed).
"""

from __future__ import annotations

import json
from typing import Any

from npfrcnn.config.c4 import STANDARD_UNITS, ModelConfig, workshop
from npfrcnn.config.detectron2 import Detectron2Config
from npfrcnn.config.fpn import FPNConfig
from npfrcnn.config.profiles.detectron2 import DETECTRON2_PROFILES, detectron2_profile
from npfrcnn.config.profiles.torchvision import (
    TORCHVISION_PROFILES,
    torchvision_profile,
)

__all__ = [
    "AnyConfig",
    "Detectron2Config",
    "FPNConfig",
    "ModelConfig",
    "PROFILES",
    "STANDARD_UNITS",
    "config_from_dict",
    "config_from_json",
    "detectron2_profile",
    "get_profile",
    "torchvision_profile",
    "workshop",
]

AnyConfig = ModelConfig | FPNConfig | Detectron2Config

#: Every named profile at its default size (``num_classes`` as the real system's default).
PROFILES: dict[str, AnyConfig] = {
    "workshop": workshop(),
    **{name: torchvision_profile(name) for name in TORCHVISION_PROFILES},
    **{name: detectron2_profile(name) for name in DETECTRON2_PROFILES},
}


def get_profile(name: str) -> AnyConfig:
    """The named profile; ``ValueError`` listing the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
        ) from None


def config_from_dict(d: dict[str, Any]) -> AnyConfig:
    """The config a JSON object describes (``architecture`` picks the class; none = C4)."""
    arch = d.get("architecture")
    if arch is None:
        return ModelConfig.from_dict(d)
    if arch == FPNConfig.ARCHITECTURE:
        return FPNConfig.from_dict(d)
    if arch == Detectron2Config.ARCHITECTURE:
        return Detectron2Config.from_dict(d)
    raise ValueError(
        f"unknown architecture {arch!r}; this npfrcnn runs 'resnet_fpn', 'detectron2' and the "
        "C4 family (no architecture field). The file may come from a newer npfrcnn"
    )


def config_from_json(s: str) -> AnyConfig:
    """Parse a config's JSON (either architecture). ``ValueError`` on bad JSON or fields."""
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise ValueError(f"config JSON is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError("config JSON must be an object")
    return config_from_dict(d)
