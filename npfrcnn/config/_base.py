"""What every config class shares: ``replace`` and the JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Self


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
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {unknown}; the file may come from a newer "
                "npfrcnn"
            )
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> Self:
        """Parse :meth:`to_json` output. Raises ``ValueError`` on bad JSON or unknown fields."""
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cls.__name__} JSON is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} JSON must be an object")
        return cls.from_dict(d)
