"""Reading a checkpoint's small JSON settings files (processor, generation): one error type, one reader.

Every problem names the file (and the field) and what to do; a missing file is not an error (the caller
falls back to its defaults).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A checkpoint's processor / generation / template file asks for something we cannot do."""


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SettingsError(f"{path} is not valid JSON ({err}); copy it again from the checkpoint") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} should hold a JSON object")
    return data


def positive_number(data: dict[str, Any], key: str, where: str, default: Any, integer: bool = True) -> Any:
    """data[key] if it is a positive number (an integer with `integer`; 4.0 counts), else `default` when
    the key is missing or null; anything else is a SettingsError naming `where` and the key."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, float) and integer and value.is_integer():
        value = int(value)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        raise SettingsError(
            f"{where}: {key} must be a positive {'integer' if integer else 'number'}, got {value!r}"
        )
    return value
