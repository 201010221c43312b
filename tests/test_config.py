"""The one deep merge behind task includes and pretraining recipes."""

import pytest

from aimv2_eval.config import deep_merge
from aimv2_eval.errors import UserError


def test_nested_dicts_merge_and_the_base_is_not_touched():
    base = {"a": {"x": 1, "y": {"z": 2}}, "free": {}, "items": [1, 2], "gone": {"k": 1}}
    out = deep_merge(base, {"a": {"y": {"w": 3}}, "free": {"any": 1}, "new": 5, "gone": None})
    assert out == {"a": {"x": 1, "y": {"z": 2, "w": 3}}, "free": {"any": 1}, "items": [1, 2], "new": 5, "gone": None}
    out["items"].append(3)
    out["a"]["x"] = 9
    assert base == {"a": {"x": 1, "y": {"z": 2}}, "free": {}, "items": [1, 2], "gone": {"k": 1}}


def test_strict_merge_names_the_unknown_key_and_the_closest_one():
    with pytest.raises(UserError, match=r"unknown config key optim\.stpes; did you mean optim\.steps\?"):
        deep_merge({"optim": {"steps": 1}}, {"optim": {"stpes": 2}}, strict=True)
    with pytest.raises(UserError, match="unknown config key zzz; known: a, b"):
        deep_merge({"a": 1, "b": 2}, {"zzz": 1}, strict=True)
    # an empty dict in the base is free-form: overrides of any key pass
    assert deep_merge({"m": {"encoder": {}}}, {"m": {"encoder": {"depth": 2}}}, strict=True) == {"m": {"encoder": {"depth": 2}}}
