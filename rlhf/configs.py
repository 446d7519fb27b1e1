"""Stage configs: a YAML file plus command-line overrides -> our options dataclass + TRL overrides.

A stage YAML holds our option fields at the top level and TRL's config fields under `trl:`:

    # rlhf train-reward EXPORT --config pipelines/configs/smollm2_reward.yaml
    model: default
    lora: false
    trl:
      learning_rate: 2.0e-5
      num_train_epochs: 1

`--set key=value` on the command line overrides either kind (TRL's when the name is TRL's). Every
problem (unknown key, wrong type) is collected and reported at once, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhf.errors import ValidationError, WorkbenchError

T = TypeVar("T")


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`["a=1", "b=x"]` -> {"a": 1, "b": "x"} (values parsed as YAML scalars)."""
    out, problems = {}, []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"`--set {item}`: expected KEY=VALUE")
            continue
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    if problems:
        raise ValidationError("overrides", problems)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise WorkbenchError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise WorkbenchError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path} must hold a mapping of option: value at the top level")
    return data


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return True


def build_options(
    cls: type[T], config: dict[str, Any], sets: dict[str, Any], trl_fields: set[str], what: str
) -> tuple[T, dict[str, Any]]:
    """(options, trl_overrides) from a YAML mapping and `--set` overrides, checked all at once."""
    hints = typing.get_type_hints(cls)
    ours = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    trl: dict[str, Any] = {}
    problems = []
    trl_section = config.get("trl") or {}
    if not isinstance(trl_section, dict):
        problems.append("`trl` must be a mapping of TRL config fields")
        trl_section = {}
    for k, v in trl_section.items():
        (trl.__setitem__(k, v) if k in trl_fields else problems.append(f"unknown TRL config field `trl.{k}`"))
    for source, mapping in (("config", {k: v for k, v in config.items() if k != "trl"}), ("--set", sets)):
        for k, v in mapping.items():
            if k in ours:
                values[k] = v
            elif k in trl_fields:
                trl[k] = v
            else:
                problems.append(f"unknown option `{k}` ({source}); see the config's comments or `--help`")
    for k, v in values.items():
        if not _type_ok(v, hints[k]):
            problems.append(f"`{k}` must be {getattr(hints[k], '__name__', hints[k])}, got {v!r}")
    if problems:
        raise ValidationError(what, problems)
    options = cls(**values)
    if hasattr(options, "problems") and (more := options.problems()):
        raise ValidationError(what, more)
    return options, trl
