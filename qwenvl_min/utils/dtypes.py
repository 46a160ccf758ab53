"""The one table of dtype spellings: every place that takes a weight dtype by name reads it here.

Used by the CLI's `--dtype` (`run`, `latents`, `attend`), `qwenvl-min convert --dtype` and
`convert_checkpoint(dtype=)` / `export_to_hf(dtype=)`, and `QwenVL.from_pretrained(dtype=)` (and its
config.json's "dtype" / "torch_dtype" field). Names are case-insensitive and may carry torch's "torch."
prefix (config.json files write "torch.bfloat16" as often as "bfloat16"); a torch dtype of the table is
taken as it is.

    parse_dtype("bf16")   -> torch.bfloat16
    parse_dtype("half")   -> torch.float16
    parse_dtype("int8")   -> DtypeError: invalid dtype 'int8': use float32 (fp32, float), bfloat16 (bf16), ...
"""

from __future__ import annotations

import torch

# dtype -> its names, the canonical one (torch's own) first
SPELLINGS: dict[torch.dtype, tuple[str, ...]] = {
    torch.float32: ("float32", "fp32", "float"),
    torch.bfloat16: ("bfloat16", "bf16"),
    torch.float16: ("float16", "fp16", "half"),
    torch.float64: ("float64", "fp64", "double"),
}
BY_NAME: dict[str, torch.dtype] = {name: dtype for dtype, names in SPELLINGS.items() for name in names}


class DtypeError(ValueError):
    """A dtype that is not in the table; the message lists what is."""


def accepted() -> str:
    """The accepted names, for help texts and errors: 'float32 (fp32, float), bfloat16 (bf16), ...'."""
    return ", ".join(f"{names[0]} ({', '.join(names[1:])})" for names in SPELLINGS.values())


def parse_dtype(value: str | torch.dtype, *, what: str = "dtype") -> torch.dtype:
    """A dtype of the table from one of its names or itself; `what` names the argument in the error."""
    if isinstance(value, torch.dtype):
        if value in SPELLINGS:
            return value
    elif isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        if name in BY_NAME:
            return BY_NAME[name]
    raise DtypeError(f"invalid {what} {value!r}: use one of {accepted()}")


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical name: torch.bfloat16 -> 'bfloat16'."""
    return SPELLINGS[dtype][0] if dtype in SPELLINGS else str(dtype).removeprefix("torch.")
