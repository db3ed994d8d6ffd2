"""Every configuration dataclass in mmlib validates its fields when constructed.

Found by walking the package: a frozen dataclass whose name ends in ``Config``, ``Arch`` or ``Rule`` (plus the profile).
For each field annotated ``int`` / ``float`` / ``bool`` (or an optional one), a value of the wrong type, and for
floats NaN and +inf, must raise :class:`mmlib.core.errors.ConfigError` naming ``Class.field``. A class added later
is covered without editing this file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing

import pytest

import mmlib
from mmlib.core.errors import ConfigError


def _config_classes() -> list[type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(mmlib.__path__, "mmlib."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == info.name
                    and (name.endswith(("Config", "Arch", "Rule")) or name == "Profile")):
                found[f"{info.name}.{name}"] = obj
    return [found[k] for k in sorted(found)]


def _default(cls: type):
    if cls.__name__ == "Profile":
        from mmlib.profiles import get_profile
        return get_profile("tiny")
    try:
        return cls()
    except TypeError:
        return None


CLASSES = _config_classes()


def _bad_values(hint) -> list:
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) is not None else hint
    if base is int:
        return ["3", 2.5, True]
    if base is float:
        return ["0.1", float("nan"), float("inf")]
    if base is bool:
        return ["yes", 2]
    return []


def _cases():
    for cls in CLASSES:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            for bad in _bad_values(hints.get(field.name)):
                yield pytest.param(cls, field.name, bad, id=f"{cls.__name__}.{field.name}={bad!r}")


def test_config_classes_are_found():
    names = {c.__name__ for c in CLASSES}
    assert {"WorldConfig", "TrainConfig", "EmbedConfig", "SAEConfig", "NCLConfig", "AdmmConfig",
            "TinyClipArch", "Profile", "CategoryRule"} <= names, names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_config_defaults_construct(cls):
    assert _default(cls) is not None or any(f.default is dataclasses.MISSING and
                                            f.default_factory is dataclasses.MISSING
                                            for f in dataclasses.fields(cls))


@pytest.mark.parametrize(("cls", "field", "bad"), list(_cases()))
def test_every_numeric_field_rejects_wrong_type_and_non_finite(cls, field, bad):
    base = _default(cls)
    if base is None:
        pytest.skip(f"{cls.__name__} has required fields")
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field}\b"):
        dataclasses.replace(base, **{field: bad})
