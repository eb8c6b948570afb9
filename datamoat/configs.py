"""Config dataclasses: small, validated, serialisable, recorded with artifacts.

Each stage's method is a dataclass that subclasses `Config`. Subclasses
validate in `__post_init__` and register themselves by class name, so a
stored config (``{"type": ..., "version": ..., ...}``) loads back only into a
known type.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Self

from datamoat.errors import BadInput

__all__ = ["Config", "config_from_dict", "check", "check_choice"]

_REGISTRY: dict[str, type[Config]] = {}


def check(ok: bool, message: str) -> None:
    """Raise `BadInput(message)` unless `ok`."""
    if not ok:
        raise BadInput(message)


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """Raise `BadInput` naming the allowed values unless `value` is one."""
    if value not in allowed:
        raise BadInput(f"unknown {name} {value!r}: choose one of {', '.join(map(str, allowed))}")


@dataclasses.dataclass
class Config:
    """Base class: subclasses are dataclasses with defaults and a `validate`."""

    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        """Check field values; raise `BadInput` on the first bad one."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict tagged with the type name and version."""
        body = dataclasses.asdict(self)
        return {"type": type(self).__name__, "version": self.VERSION, **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Load a config written by `Config.to_dict`; only registered types load.

    >>> from datamoat.train.loop import TrainConfig
    >>> config_from_dict(TrainConfig(epochs=2).to_dict()).epochs
    2
    """
    d = dict(d)
    name = d.pop("type", None)
    version = d.pop("version", None)
    cls = _REGISTRY.get(str(name))
    if cls is None:
        raise BadInput(f"unknown config type {name!r}: known types are {', '.join(sorted(_REGISTRY))}")
    if version != cls.VERSION:
        raise BadInput(f"{name} version {version} is not supported: this datamoat reads version {cls.VERSION}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise BadInput(f"{name} has no field(s) {', '.join(sorted(unknown))}")
    # JSON turns tuples into lists; give tuple-typed defaults their type back.
    for f in dataclasses.fields(cls):
        if f.name in d and isinstance(d[f.name], list) and isinstance(f.default, tuple):
            d[f.name] = tuple(d[f.name])
    return cls(**d)
