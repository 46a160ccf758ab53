"""Render a checkpoint's own Jinja chat template, the way transformers' `apply_chat_template` does.

The environment matches transformers': a sandbox (templates from the Hub are untrusted code), trim_blocks
and lstrip_blocks, the loop-controls extension, a `tojson` filter that does not HTML-escape, and the
globals `raise_exception`, `strftime_now` and `namespace`. Template variables are the messages,
`add_generation_prompt`, the tokenizer's special tokens (bos_token, eos_token, ...) and any the caller
names explicitly (e.g. `add_vision_id=True` for the Qwen2-VL templates, which then write "Picture 1: ").
Message keys whose value is None are dropped first, as transformers does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any


class ChatTemplateError(ValueError):
    """The template cannot be compiled or raised an error while rendering."""


@cache
def _compile(source: str) -> Any:
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError(
            "rendering a checkpoint's chat template needs jinja2: pip install 'qwenvl-min[text]'"
        ) from None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = jinja2.utils.Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ChatTemplateError(
            f"the checkpoint's chat template does not compile: {err} (line {err.lineno})"
        ) from None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """One conversation rendered with `template`; `variables` become template variables."""
    import jinja2

    compiled = _compile(template)
    try:
        return compiled.render(
            messages=_plain(messages),
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **dict(variables or {}),
        )
    except jinja2.exceptions.TemplateError as err:
        raise ChatTemplateError(f"the checkpoint's chat template refused these messages: {err}") from None
