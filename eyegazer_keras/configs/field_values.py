"""`--set key=value` text parsed by the declared type of a dataclass field.

The type comes from the annotation (`typing.get_type_hints`), not from guessing: an `int | None`
field takes `12` or `none`, a `bool | str` field takes `true` or `fusible`, a `dict` field a
JSON object, a `tuple[str, ...]` field a comma list.

```python
from eyegazer_keras.configs import settings as configs, field_values

assert field_values.parse_value(configs.TrainConfig, "epochs", "3") == 3
assert field_values.parse_value(configs.TrainConfig, "lora_alpha", "none") is None
assert field_values.parse_value(configs.TrainConfig, "jit_compile", "fusible") == "fusible"
assert field_values.parse_value(configs.TrainConfig, "lora_targets", "query,value") == (
    "query",
    "value",
)
```
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _parse_as(text: str, hint: Any) -> Any:
    """Parses `text` as the type `hint`; raises ValueError saying what was expected."""
    stripped = text.strip()
    lowered = stripped.lower()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if type(None) in options and lowered in ("none", "null"):
            return None
        order = (bool, int, float, dict, tuple, str)  # most specific first: "1" is an int
        concrete = sorted(
            (o for o in options if o is not type(None)),
            key=lambda o: order.index(typing.get_origin(o) or o),
        )
        errors = []
        for option in concrete:
            try:
                return _parse_as(text, option)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(" or ".join(errors))
    if hint is bool:
        if lowered in _TRUE + _FALSE:
            return lowered in _TRUE
        raise ValueError(f"expected true/false, got '{text}'")
    if hint is int:
        try:
            return int(stripped)
        except ValueError:
            raise ValueError(f"expected an integer, got '{text}'") from None
    if hint is float:
        try:
            return float(stripped)
        except ValueError:
            raise ValueError(f"expected a number, got '{text}'") from None
    if hint is dict or origin is dict:
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object such as {{\"num_layers\": 2}}, got '{text}'")
        return value
    if hint is tuple or origin is tuple:
        try:
            items = json.loads(stripped) if stripped.startswith("[") else stripped.split(",")
        except json.JSONDecodeError:
            raise ValueError(f"expected a comma-separated list, got '{text}'") from None
        items = [str(x).strip() for x in items if str(x).strip()]
        if not items:
            raise ValueError("expected a comma-separated list, e.g. query,value")
        return tuple(items)
    if hint is str:
        return stripped
    raise ValueError(f"cannot parse a value of type {hint}")


def parse_value(config_class: type, key: str, text: str) -> Any:
    """Parses a `--set key=text` value by the declared type of field `key` of `config_class`.

    `none`/`null` is None for optional fields; booleans are true/false (yes/no, on/off, 1/0);
    dicts are JSON objects; tuples are comma lists or JSON lists; `bool | str` takes either.

    Args:
        config_class: type. A dataclass, e.g. `configs.TrainConfig` or `configs.SearchConfig`.
        key: str. A field name.
        text: str. The value as typed.

    Returns:
        The parsed value.

    Raises:
        ValueError: if `text` does not parse as the field's type (the message says what would).
        KeyError: if `key` is not a field.
    """
    return _parse_as(text, typing.get_type_hints(config_class)[key])
