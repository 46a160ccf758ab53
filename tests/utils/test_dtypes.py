"""The one table of dtype spellings (`qwenvl_min.utils.dtypes`): every name of each dtype, torch's "torch."
prefix and any case give the same dtype; anything else is one error listing what is accepted. The CLI's
--dtype, convert's dtype and from_pretrained's dtype= all read it (tests/cli/test_cli_messages.py,
tests/weights_convert/test_convert.py, tests/hf/test_from_pretrained.py)."""

from __future__ import annotations

import pytest
import torch

from qwenvl_min.utils.dtypes import BY_NAME, SPELLINGS, DtypeError, accepted, dtype_name, parse_dtype

EXPECTED = {  # written out by hand: the spellings users type (transformers', torch's, the usual short ones)
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


@pytest.mark.parametrize(("name", "dtype"), EXPECTED.items())
def test_every_spelling(name, dtype):
    for variant in (name, name.upper(), f"torch.{name}", f" {name} "):
        assert parse_dtype(variant) is dtype
    assert parse_dtype(dtype) is dtype
    assert dtype_name(dtype) == str(dtype).removeprefix("torch.")


def test_the_table_is_exactly_these():
    assert BY_NAME == EXPECTED
    assert set(SPELLINGS) == set(EXPECTED.values())


@pytest.mark.parametrize(
    "bad", ["int8", "fp8", "auto", "", "bfloat", torch.int64, torch.float8_e4m3fn, 16, None]
)
def test_anything_else_is_one_error_listing_the_names(bad):
    with pytest.raises(DtypeError, match=r"^invalid --dtype .*: use one of float32 \(fp32, float\), ") as err:
        parse_dtype(bad, what="--dtype")
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert accepted() in str(err.value) and "float16 (fp16, half)" in accepted()
