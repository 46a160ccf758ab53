"""Tap tensors for a stream of inputs, several inputs per forward: the library side of `latents`.

    preparer = InputPreparer(model.config, model.checkpoint_dir, Recipe())
    inputs = (preparer(source_of(p)) for p in paths)            # or prepared_in_order(..., workers=4)
    for item, tensors in extract_latents(model, inputs, ["visual.merger.input", "text.layers.20"]):
        tensors["visual.merger.input"]                            # (N, D) this input's rows

`extract_latents` packs consecutive inputs into one forward under `batch_tokens` (patch rows per forward;
None: `packing.default_batch_tokens`, 16384 on an accelerator, smaller on a CPU where big packs are slower)
and `batch_size` (inputs per forward) and yields `(input, {tap name: value})` for every input, in the
order given, each value the input's own part (`packing.Pack`), equal to a forward of that input alone
within fp32 rounding (tests/latents/test_packing.py). How a pack runs:
- only tower taps (`visual...`): one call of `model.visual` on the pack's rows; the decoder never runs;
- decoder taps too: one forward of the whole model with a batch row per input, left padded (masked, so
  each row sees only its own tokens and its positions skip the padding); the lm_head runs on the last
  position only unless an `lm_head` tap is read. Rows rather than one decoder forward per input: one
  launch per layer instead of B, and `packs` bounds the padding.
Values: tensors in the model's dtype on its device (a row slice of the pack's tensor where that is
one: copy it to keep it past the next pack), and `SegmentMaps` for tower attention maps. `layout="grid"`
gives tower tensors in image order: patch rows as (t, h, w, ...) and merged tokens as (t, h/m, w/m, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ..inputs.pipeline import BAD_INPUT, Failed
from ..interp.taps import PROBS, Taps
from ..model.attention import SegmentMaps
from ..model.geometry import merged_to_grid, rows_to_grid
from ..model.qwenvl import QwenVL
from .packing import Pack, default_batch_tokens, packs
from .prepare import LatentInput

DEFAULT_BATCH_SIZE = 32
LAYOUTS = ("rows", "grid")


def is_tower_tap(name: str) -> bool:
    return name == "visual" or name.startswith("visual.")


def extract_latents(
    model: QwenVL,
    inputs: Iterable[LatentInput],
    taps: Sequence[str],
    *,
    batch_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    layout: str = "rows",
    errors: str = "raise",
) -> Iterator[tuple[LatentInput, dict[str, Any]] | Failed[LatentInput]]:
    """(input, {tap: value}) for every input, in order, packing inputs as the module docstring says.

    `errors="skip"`: an input the model refuses (a ValueError, e.g. a prompt over the context) is yielded as
    `Failed(input, why)` in its place (its pack is rerun one input at a time to find it) instead of
    raising."""
    names = list(taps)
    if not names:
        raise ValueError("no taps given; name at least one, e.g. visual.merger.input")
    Taps(model, read=names)  # unknown names fail here, before any input is read
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    decoder = not all(is_tower_tap(n) for n in names)
    if batch_tokens is None:
        weight = model.text.embed_tokens.weight
        batch_tokens = default_batch_tokens(model.config.vision, weight.dtype, weight.device)
    for group in packs(inputs, batch_tokens, batch_size, decoder):
        try:
            yield from zip(group, _run(model, group, names, decoder, layout))
        except BAD_INPUT as err:
            if errors == "raise":
                raise
            if len(group) == 1:
                yield Failed(group[0], f"{type(err).__name__}: {' '.join(str(err).split())}")
                continue
            for item in group:  # find the input the pack failed on: each one alone
                yield from extract_latents(
                    model,
                    [item],
                    names,
                    batch_tokens=batch_tokens,
                    batch_size=1,
                    layout=layout,
                    errors="skip",
                )


def _run(
    model: QwenVL, group: list[LatentInput], names: list[str], decoder: bool, layout: str
) -> list[dict[str, Any]]:
    """Every item's values from one forward of the pack."""
    device = model.text.embed_tokens.weight.device
    merge = model.config.vision.merge_size
    pack = Pack.of([item.to(device, non_blocking=True) for item in group], merge)
    values = _forward(model, pack, names, decoder)
    return [
        {name: _part(pack, name, values[name], b, layout, merge) for name in names} for b in range(len(group))
    ]


def _forward(model: QwenVL, pack: Pack, names: list[str], decoder: bool) -> dict[str, Any]:
    with torch.inference_mode(), model.taps(read=names) as taps:
        if decoder:
            ids, mask = pack.token_batch()
            device = model.text.embed_tokens.weight.device
            every_logit = any(n == "lm_head" or n.startswith("lm_head.") for n in names)
            model(
                ids.to(device),
                attention_mask=None if mask is None else mask.to(device),
                **pack.model_inputs(),
                logits_to_keep=0 if every_logit else 1,
            )
        else:  # what QwenVL.forward runs for the vision features: images' rows, then videos'
            model.visual(*pack.tower_inputs())
    return taps.cache


def _part(pack: Pack, name: str, value: Any, b: int, layout: str, merge: int) -> Any:
    if isinstance(value, SegmentMaps):
        return pack.maps_part(value, b)
    if not isinstance(value, Tensor):  # every module of the tree returns a tensor; a swapped-in one might not
        raise ValueError(
            f"tap {name} gave a {type(value).__name__}, not a tensor; latents saves tensors only"
        )
    if not is_tower_tap(name):
        return pack.text_part(name, value, b, attention_maps=name.endswith(PROBS))
    part = pack.vision_part(name, value, b)
    if layout == "rows":
        return part
    grid = tuple(pack.items[b].grid_thw[0].tolist())
    return (rows_to_grid if part.shape[0] == pack.items[b].rows else merged_to_grid)(part, grid, merge)
