"""Model configurations: one frozen dataclass per architecture, and the named profiles.

* :class:`ModelConfig` (:mod:`npfrcnn.config.c4`): the ResNet-C4 family; the ``workshop``
  profile reproduces the Tryolabs workshop network.
* :class:`FPNConfig` (:mod:`npfrcnn.config.fpn`): torchvision's ResNet + FPN Faster R-CNN; the
  profiles ``torchvision-r50-fpn``, ``torchvision-r50-fpn-v2`` and ``torchvision-r101-fpn``
  (:mod:`npfrcnn.config.profiles.torchvision`).

A config is pure data and round-trips through JSON (it is stored in every weights file);
:func:`config_from_json` reads either kind: an FPN config carries ``"architecture":
"resnet_fpn"``, and a JSON object without ``architecture`` is a C4 config (every weights file
written before the FPN profiles existed).
"""

from __future__ import annotations

import json
from typing import Any

from npfrcnn.config.c4 import STANDARD_UNITS, ModelConfig, workshop
from npfrcnn.config.fpn import FPNConfig
from npfrcnn.config.profiles.torchvision import (
    TORCHVISION_PROFILES,
    torchvision_profile,
)

__all__ = [
    "AnyConfig",
    "FPNConfig",
    "ModelConfig",
    "PROFILES",
    "STANDARD_UNITS",
    "config_from_dict",
    "config_from_json",
    "get_profile",
    "torchvision_profile",
    "workshop",
]

AnyConfig = ModelConfig | FPNConfig

#: Every named profile at its default size (``num_classes`` as the real system's default).
PROFILES: dict[str, AnyConfig] = {
    "workshop": workshop(),
    **{name: torchvision_profile(name) for name in TORCHVISION_PROFILES},
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
    raise ValueError(
        f"unknown architecture {arch!r}; this npfrcnn runs 'resnet_fpn' and the C4 family "
        "(no architecture field). The file may come from a newer npfrcnn"
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
