"""What every config class shares: ``replace`` and the JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any, Self


class ConfigError(ValueError):
    """A stored or given config cannot be used; the message names the field and the fix."""


def _non_finite(value: Any, key: str) -> Iterator[str]:
    """``key`` (``key[i]``, ``key.sub`` inside lists and objects) of every NaN or infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        yield f"{key} = {value!r}"
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{key}.{k}")


class ConfigBase:
    """Mixin for the frozen config dataclasses (``ModelConfig``, ``FPNConfig``)."""

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        """The config as a JSON object (sorted keys); :meth:`from_json` inverts it."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """The config ``d`` describes (a loaded JSON object), checked before it is built.

        Raises:
            ConfigError: (a ``ValueError``) an unknown field, or a NaN or infinite number
                anywhere in it (JSON's ``NaN`` / ``Infinity``, which Python's ``json`` reads),
                naming every such key; then the class's own checks.
        """
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s) {unknown}; the file may come from a newer "
                "npfrcnn"
            )
        bad = [b for k in sorted(d) for b in _non_finite(d[k], k)]
        if bad:
            raise ConfigError(
                f"{cls.__name__}: non-finite value(s) {'; '.join(bad)}; every config number "
                "must be finite: fix these fields (or re-create the file)"
            )
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> Self:
        """Parse :meth:`to_json` output (:meth:`from_dict`'s checks apply).

        Raises:
            ConfigError: bad JSON, not an object, unknown fields or non-finite numbers.
        """
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__} JSON is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__} JSON must be an object")
        return cls.from_dict(d)
