"""The Config base: nesting, round trips, scikit-learn style nested names, and path-naming errors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import pytest

from datamoat.configs import Config, check, config_from_dict
from datamoat.errors import BadInput


@dataclasses.dataclass
class ToyLeaf(Config):
    size: int = 1
    widths: tuple[int, ...] = ()

    def validate(self) -> None:
        check(self.size >= 1, f"size must be at least 1, got {self.size}")


def _recipe_leaf() -> ToyLeaf:
    return ToyLeaf(size=5)  # the recipe's own default differs from ToyLeaf's


@dataclasses.dataclass
class ToyStep(Config):
    VERSION: ClassVar[int] = 2

    rate: float = 0.5
    leaf: ToyLeaf = dataclasses.field(default_factory=_recipe_leaf)

    def validate(self) -> None:
        check(0 < self.rate < 1, f"rate must be in (0, 1), got {self.rate}")

    @classmethod
    def upgrade(cls, d: dict[str, Any], version: object) -> dict[str, Any]:
        if version != 1:
            return super().upgrade(d, version)
        out = {k: v for k, v in d.items() if k != "leaf_size"}  # version 1 held the leaf's size flat
        return {**out, "leaf": {"size": d["leaf_size"]}} if "leaf_size" in d else out


@dataclasses.dataclass
class ToyRecipe(Config):
    name: str = "r"
    step: ToyStep = dataclasses.field(default_factory=ToyStep)
    extra: ToyStep | None = None


def test_nested_configs_round_trip_through_json():
    cfg = ToyRecipe(name="x", step=ToyStep(rate=0.25, leaf=ToyLeaf(size=3, widths=(8, 16))), extra=ToyStep())
    d = json.loads(cfg.to_json())
    assert d["step"] == {
        "type": "ToyStep",
        "version": 2,
        "rate": 0.25,
        "leaf": {"type": "ToyLeaf", "version": 1, "size": 3, "widths": [8, 16]},
    }
    back = config_from_dict(d)
    assert back == cfg and isinstance(back.step.leaf, ToyLeaf) and back.step.leaf.widths == (8, 16)
    none = ToyRecipe()
    assert none.to_dict()["extra"] is None and config_from_dict(json.loads(none.to_json())) == none


def test_a_dict_changes_fields_over_the_fields_default():
    # ToyStep's default leaf has size 5: a dict keeps it unless it names it.
    assert ToyRecipe(step={"rate": 0.1}).step == ToyStep(rate=0.1, leaf=ToyLeaf(size=5))
    assert ToyRecipe(step={"leaf": {"widths": [4]}}).step.leaf == ToyLeaf(size=5, widths=(4,))
    # An optional config's default is None: a dict lays over the type's own defaults.
    assert ToyRecipe(extra={}).extra == ToyStep()
    # A partial stored dict loads the same way.
    assert config_from_dict({"type": "ToyRecipe", "version": 1, "step": {"rate": 0.2}}).step.leaf.size == 5


def test_replace_and_get_params_use_nested_names():
    cfg = ToyRecipe()
    new = cfg.replace(step__rate=0.2, step__leaf__size=7)
    assert (new.step.rate, new.step.leaf.size) == (0.2, 7)
    assert (cfg.step.rate, cfg.step.leaf.size) == (0.5, 5)  # copied along the path, never changed in place
    assert cfg.replace(step={"rate": 0.3}).step.leaf.size == 5  # a dict changes the current config's fields
    params = new.get_params()
    assert params["step__leaf__size"] == 7 and params["step"] is new.step and "step__leaf" in params
    assert "step__rate" not in cfg.get_params(deep=False)
    with pytest.raises(BadInput, match="^ToyRecipe has no field.s. stepp$"):
        cfg.replace(stepp__rate=0.2)
    with pytest.raises(BadInput, match="extra is None, not a config"):
        cfg.replace(extra__rate=0.2)
    assert cfg.replace(extra={"rate": 0.2}).extra == ToyStep(rate=0.2)


def test_errors_in_nested_configs_name_the_path():
    with pytest.raises(BadInput, match=r"^step\.leaf: size must be at least 1, got 0$"):
        config_from_dict({"type": "ToyRecipe", "version": 1, "step": {"leaf": {"size": 0}}})
    with pytest.raises(BadInput, match=r"^step\.leaf: size must be at least 1, got 0$"):
        ToyRecipe().replace(step__leaf__size=0)
    with pytest.raises(BadInput, match=r"^step: rate must be in \(0, 1\), got 2$"):
        ToyRecipe(step={"rate": 2})
    with pytest.raises(BadInput, match=r"^step\.leaf: ToyLeaf has no field.s. sise: its fields are size, widths$"):
        ToyRecipe(step={"leaf": {"sise": 2}})
    with pytest.raises(BadInput, match="^step: a ToyStep is needed here, not a ToyLeaf$"):
        ToyRecipe(step=ToyLeaf().to_dict())
    with pytest.raises(BadInput, match="^step: must be a ToyStep or a dict of its fields, not int$"):
        ToyRecipe(step=3)
    with pytest.raises(BadInput, match="^step: a ToyStep is needed here, not None$"):
        ToyRecipe(step=None)
    # A nested config changed in place is caught by validating the whole tree.
    cfg = ToyRecipe()
    cfg.step.leaf.size = -1
    with pytest.raises(BadInput, match=r"^step\.leaf: size must be at least 1, got -1$"):
        cfg.validate_all()


def test_an_older_version_is_upgraded_or_refused_by_name():
    old = {"type": "ToyStep", "version": 1, "rate": 0.2, "leaf_size": 9}
    assert config_from_dict(old) == ToyStep(rate=0.2, leaf=ToyLeaf(size=9))
    # Nested, too: the recipe holds a version 1 step.
    assert config_from_dict({"type": "ToyRecipe", "version": 1, "step": old}).step.leaf.size == 9
    with pytest.raises(BadInput, match="ToyLeaf version 0 is not supported: this datamoat reads version 1"):
        config_from_dict({"type": "ToyLeaf", "version": 0})
    with pytest.raises(BadInput, match="version None is not supported"):
        config_from_dict({"type": "ToyLeaf", "size": 2})
    with pytest.raises(BadInput, match="unknown config type 'Nope'"):
        config_from_dict({"type": "Nope", "version": 1})
