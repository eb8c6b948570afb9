"""Config dataclasses: small, validated, serialisable, recorded with artifacts.

Each stage's method is a dataclass that subclasses `Config`. Subclasses
validate in `__post_init__` and register themselves by class name, so a
stored config (``{"type": ..., "version": ..., ...}``) loads back only into a
known type.

Configs compose: a field typed as another config (or ``SomeConfig | None``)
holds that config, as scikit-learn's estimators hold theirs. Such a field is
written as the nested config's own tagged dict and loads back into it; a
plain dict given for it means "these fields over the field's default", so
a recipe's own defaults for a step survive a partial override. Nested names
are joined with ``__`` (``distill__train__epochs``) by `replace` and
`get_params`, and an error in a nested config names its path.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from typing import Any, ClassVar, Self

from datamoat.errors import BadInput

__all__ = ["Config", "config_from_dict", "check", "check_choice"]

_REGISTRY: dict[str, type[Config]] = {}
# class -> {field name: (its config type, whether None is allowed)}, resolved once per class
_NESTED: dict[type, dict[str, tuple[type[Config], bool]]] = {}


def check(ok: bool, message: str) -> None:
    """Raise `BadInput(message)` unless `ok`."""
    if not ok:
        raise BadInput(message)


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """Raise `BadInput` naming the allowed values unless `value` is one."""
    if value not in allowed:
        raise BadInput(f"unknown {name} {value!r}: choose one of {', '.join(map(str, allowed))}")


def _at(name: str, e: BadInput) -> BadInput:
    """`e` raised inside the nested config `name`, its message prefixed with the path to it."""
    path = f"{name}.{e.field_path}" if hasattr(e, "field_path") else name
    reason = getattr(e, "reason", str(e))
    out = BadInput(f"{path}: {reason}")
    out.field_path, out.reason = path, reason  # type: ignore[attr-defined]
    return out


@dataclasses.dataclass
class Config:
    """Base class: subclasses are dataclasses with defaults and a `validate`."""

    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __post_init__(self) -> None:
        self.validate_all()

    def validate(self) -> None:  # pragma: no cover - overridden
        """Check this config's own field values; raise `BadInput` on the first bad one."""

    def validate_all(self) -> None:
        """Check the nested configs, then this one: construction runs it, and so
        can a caller who changed a nested config in place. A nested error names
        its path, e.g. ``distill.train: epochs must be at least 1, got 0``."""
        for name, (cls, optional) in _nested_fields(type(self)).items():
            value = getattr(self, name)
            try:
                if isinstance(value, dict):
                    value = _merge(cls, _field_default(type(self), name, cls), value)
                elif value is None:
                    check(optional, f"a {cls.__name__} is needed here, not None")
                elif isinstance(value, cls):
                    value.validate_all()
                else:
                    raise BadInput(f"must be a {cls.__name__} or a dict of its fields, not {type(value).__name__}")
            except BadInput as e:
                raise _at(name, e) from e
            setattr(self, name, value)
        self.validate()

    @classmethod
    def upgrade(cls, d: dict[str, Any], version: object) -> dict[str, Any]:
        """The fields of a dict stored by an older `version` of this config, in today's form.

        Only configs whose stored form changed override it; by default an old
        version is refused.
        """
        raise BadInput(f"{cls.__name__} version {version} is not supported: this datamoat reads version {cls.VERSION}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict tagged with the type name and version; nested configs are tagged too."""
        body = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"type": type(self).__name__, "version": self.VERSION, **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Field values by name; with `deep`, a nested config's as ``name__field`` too (scikit-learn's names).

        >>> from datamoat.compress.distill import DistillConfig
        >>> DistillConfig().get_params()["train__epochs"]
        10
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = out[f.name] = getattr(self, f.name)
            if deep and isinstance(value, Config):
                out.update({f"{f.name}__{k}": v for k, v in value.get_params().items()})
        return out

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again); ``a__b`` changes field `b` of nested config `a`.

        Nested configs along a changed path are copied, never changed in place;
        a dict for a nested config changes those of its fields.

        >>> from datamoat.compress.distill import DistillConfig
        >>> DistillConfig().replace(alpha=0.1, train__epochs=2).train.epochs
        2
        """
        names = {f.name for f in dataclasses.fields(self)}
        direct: dict[str, Any] = {}
        deep: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            head, nested, rest = key.partition("__")
            if nested:
                deep.setdefault(head, {})[rest] = value
            else:
                direct[key] = value
        unknown = sorted((set(direct) | set(deep)) - names)
        check(not unknown, f"{type(self).__name__} has no field(s) {', '.join(unknown)}")
        nested_fields = _nested_fields(type(self))
        for name, value in direct.items():
            if name in nested_fields and isinstance(value, dict):
                cls = nested_fields[name][0]
                current = getattr(self, name)
                base = current if isinstance(current, cls) else _field_default(type(self), name, cls)
                try:
                    direct[name] = _merge(cls, base, value)
                except BadInput as e:
                    raise _at(name, e) from e
        for name, sub in deep.items():
            current = direct.get(name, getattr(self, name))
            if not isinstance(current, Config):
                raise BadInput(f"{name} is {current!r}, not a config: set {name} itself, e.g. {name}={{...}}")
            try:
                direct[name] = current.replace(**sub)
            except BadInput as e:
                raise _at(name, e) from e
        return dataclasses.replace(self, **direct)


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data, as `dataclasses.asdict` makes it, but nested configs tagged."""
    if isinstance(value, Config):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _nested_fields(cls: type[Config]) -> dict[str, tuple[type[Config], bool]]:
    """The fields of `cls` that hold a config: name -> (config type, whether None is allowed)."""
    if cls not in _NESTED:
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):  # a name imported for type checkers only: no nested config uses one
            hints = {}
        out = {}
        for f in dataclasses.fields(cls):
            hint = hints.get(f.name)
            args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            configs = [a for a in args if isinstance(a, type) and issubclass(a, Config)]
            if len(configs) == 1 and all(a is configs[0] or a is type(None) for a in args):
                out[f.name] = (configs[0], type(None) in args)
        _NESTED[cls] = out
    return _NESTED[cls]


def _field_default(owner: type[Config], name: str, cls: type[Config]) -> Config:
    """What a dict given for field `name` of `owner` is laid over: the field's default, or `cls()` if that is None."""
    f = next(f for f in dataclasses.fields(owner) if f.name == name)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return default if isinstance(default, cls) else cls()


def _fields_of(cls: type[Config], d: dict[str, Any]) -> dict[str, Any]:
    """A stored dict's field values for `cls`: tag checked, older versions upgraded, unknown fields refused."""
    d = dict(d)
    name = d.pop("type", cls.__name__)
    version = d.pop("version", cls.VERSION)
    if name != cls.__name__:
        raise BadInput(f"a {cls.__name__} is needed here, not a {name}")
    if version != cls.VERSION:
        d = cls.upgrade(d, version)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise BadInput(
            f"{name} has no field(s) {', '.join(sorted(unknown))}: its fields are {', '.join(sorted(fields))}"
        )
    # JSON turns tuples into lists; give tuple-typed defaults their type back.
    for f in dataclasses.fields(cls):
        if f.name in d and isinstance(d[f.name], list) and isinstance(f.default, tuple):
            d[f.name] = tuple(d[f.name])
    return d


def _merge(cls: type[Config], base: Config, d: dict[str, Any]) -> Config:
    """`base` with the fields in `d` changed; a nested dict in `d` is merged into `base`'s nested config."""
    fields = _fields_of(cls, d)
    for name, (sub_cls, _) in _nested_fields(cls).items():
        if isinstance(fields.get(name), dict):
            current = getattr(base, name)
            sub_base = current if isinstance(current, sub_cls) else _field_default(cls, name, sub_cls)
            try:
                fields[name] = _merge(sub_cls, sub_base, fields[name])
            except BadInput as e:
                raise _at(name, e) from e
    return dataclasses.replace(base, **fields)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Load a config written by `Config.to_dict`; only registered types load.

    Nested configs load back into their types. A dict written by an older
    version of a config whose form changed is upgraded (see `Config.upgrade`).

    >>> from datamoat.train.loop import TrainConfig
    >>> config_from_dict(TrainConfig(epochs=2).to_dict()).epochs
    2
    """
    name = d.get("type")
    cls = _REGISTRY.get(str(name))
    if cls is None:
        raise BadInput(f"unknown config type {name!r}: known types are {', '.join(sorted(_REGISTRY))}")
    if "version" not in d:
        raise BadInput(f"{name} version None is not supported: this datamoat reads version {cls.VERSION}")
    return cls(**_fields_of(cls, d))
