"""One-line config errors: a pydantic `ValidationError` becomes one `UserError`, `key=value: rule`.

The key is the full dotted path (`tokenizer.train.optim.lr`, list items as `sweep.seeds[1]`); an
unknown key names itself and the allowed ones. Rules spanning fields (`model_validator`s) raise
`check(...)`'s error, which names the field it is about.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from sphereard.errors import UserError

M = TypeVar("M", bound=BaseModel)
RULE = "rule"  # the error type of `check` and `reject_non_finite`
DICT_KEY = "[key]"  # the last part of a pydantic error location about a mapping's key, not its value
# pydantic's wording -> ours, for the errors a params file can make
EXPECTED = {"int_type": "expected an integer", "float_type": "expected a number", "bool_type": "expected bool",
            "string_type": "expected str", "list_type": "expected a list", "dict_type": "expected a mapping",
            "model_type": "expected a mapping", "finite_number": "must be a finite number"}


def check(ok: bool, key: str, value: Any, rule: str) -> None:
    """Fail with `<block>.<key>=<value>: <rule>` (in a validator: the block's path is prefixed)."""
    if not ok:
        raise PydanticCustomError(RULE, "{rule}", {"key": key, "value": value, "rule": rule})


def reject_non_finite(value: Any, key: str = "") -> Any:
    """No NaN or +-Inf anywhere in a free-form value (`overrides`), also nested: an AfterValidator."""
    if isinstance(value, float):
        check(math.isfinite(value), key, value, "must be a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            reject_non_finite(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            reject_non_finite(v, f"{key}[{i}]")
    return value


def _join(path: str, part: str | int) -> str:
    """`path` + a key (`lr`, `ray.num_workers`), a list index (3) or a sub-path (`.a`, `[1]`, ``)."""
    if isinstance(part, int):
        return f"{path}[{part}]"
    if not part or part.startswith("["):
        return path + part
    part = part.removeprefix(".")
    return f"{path}.{part}" if path else part


def _number(bound: Any) -> str:
    return str(int(bound)) if isinstance(bound, float) and bound.is_integer() else str(bound)


def _rule(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind in EXPECTED:
        return EXPECTED[kind]
    if kind == "greater_than":
        return "must be positive" if ctx["gt"] == 0 else f"must be > {_number(ctx['gt'])}"
    bounds = {"greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
    if kind in bounds:
        op, name = bounds[kind]
        return f"must be {op} {_number(ctx[name])}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}"
    if kind == "too_short":
        return "list at least one value" if ctx["min_length"] == 1 else f"needs at least {ctx['min_length']} entries"
    if kind == "too_long":
        return f"needs at most {ctx['max_length']} entries"
    return err["msg"]


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation (`Block`, `list[Block]`, `Block | None`); else itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def user_error(error: ValidationError, model: type[BaseModel], prefix: str = "") -> UserError:
    """The first error of `model.model_validate(...)` as one line; keys start with `prefix`."""
    err = error.errors(include_url=False)[0]
    loc = [part for part in err["loc"] if part != DICT_KEY]  # pydantic marks a mapping's bad key with it
    key_error = DICT_KEY in err["loc"] or err["type"] == "invalid_key"
    key = prefix
    for i, part in enumerate(loc):
        key = _join(key, str(part) if key_error and i == len(loc) - 1 else part)  # a key, not a list index
    if err["type"] in ("extra_forbidden", "invalid_key"):  # invalid_key: a non-string key in a block
        owner = model
        for part in loc[:-1]:  # the block the unknown key is in (list indices step into the item model)
            if not isinstance(part, int):
                owner = _model_in(owner.model_fields[part].annotation)
        return UserError(f"{key}: unknown key (allowed: {', '.join(sorted(owner.model_fields))})")
    if DICT_KEY in err["loc"]:
        return UserError(f"{key}: keys must be strings")
    value = err["input"]
    if err["type"] == RULE:
        key, value = _join(key, err["ctx"]["key"]), err["ctx"]["value"]
        return UserError(f"{key or '<root>'}={value!r}: {err['ctx']['rule']}")
    return UserError(f"{key or '<root>'}={value!r}: {_rule(err)}")


def validated(model: type[M], data: Any, prefix: str = "") -> M:
    """`model.model_validate(data)`, its first error raised as one `UserError` naming `prefix.<key>`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise user_error(err, model, prefix) from None
