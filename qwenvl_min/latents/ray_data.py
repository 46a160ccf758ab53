"""Latents beyond one machine with Ray Data: a callable class for `map_batches` (install `qwenvl-min[ray]`).

    import ray
    from qwenvl_min.latents.ray_data import LatentsExtractor, inputs_dataset

    ds = inputs_dataset(["s3-mounted/photos/", "more.jpg"])            # rows {"name", "path"}, as the CLI
    out = ds.map_batches(
        LatentsExtractor,
        fn_constructor_kwargs={"model": "/models/Qwen2.5-VL-7B-Instruct", "taps": ["visual.merger.input"],
                               "device": "cuda", "dtype": "bfloat16"},
        batch_size=64,                                  # inputs per call; packed as `latents` packs them
        compute=ray.data.ActorPoolStrategy(size=8),     # `concurrency=8` on Ray < 2.51
        num_gpus=1,                                     # one model per GPU
    )
    good = out.filter(lambda row: not row["error"])
    good.drop_columns(["error"]).write_webdataset("/shared/latents", encoder=None)

Each output row is one input: `__key__` (its WebDataset key), `safetensors` (the bytes of the file
`latents --format safetensors` writes for it: the same tensors within fp32 rounding, and the same
metadata), `json` (that metadata as JSON, as in `latents --format webdataset`) and `error` ("" when it
worked; else why, with `safetensors` empty). Written with `write_webdataset(..., encoder=None)` the
samples are those of `latents --format webdataset` (Ray names the tar files itself). Failed inputs are
rows, never dropped silently: filter on `error`. docs/distributed.md has the multi-node recipe.

Ray is imported only here, and only by `inputs_dataset`: the class itself needs nothing of Ray.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..inputs.input_lists import InputSource, duplicate_names, expand_inputs
from ..inputs.pipeline import Failed
from .extract import DEFAULT_BATCH_SIZE, extract_latents
from .prepare import InputPreparer, LatentInput, Recipe
from .records import record_metadata, run_settings, safetensors_bytes, stored_tensors
from .shards import sample_key

BAD_INPUT = (OSError, ValueError, ImportError)


def inputs_dataset(locations: Iterable[str]) -> Any:
    """A `ray.data.Dataset` of rows {"name", "path"}: files, URLs and directories (walked recursively)
    named as `latents` names them (`qwenvl_min.inputs.input_lists`)."""
    import ray.data

    sources = expand_inputs(locations)
    if clash := duplicate_names([sample_key(s.name) for s in sources]):
        raise ValueError(f"several inputs would take the key(s) {clash[:5]}; rename or split the inputs")
    return ray.data.from_items([{"name": s.name, "path": s.location} for s in sources])


class LatentsExtractor:
    """`ds.map_batches(LatentsExtractor, fn_constructor_kwargs={...})`: one model per actor (see the module
    docstring). Arguments as the CLI's flags: `recipe` holds the pixel / frame budgets and the prompt."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        taps: Sequence[str],
        *,
        device: str = "cpu",
        dtype: str | None = None,
        recipe: Recipe | None = None,
        layout: str = "rows",
        batch_tokens: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        from ..hf.pretrained import from_pretrained
        from ..utils.validate import guard_finite_hidden_states

        dtypes = {"float32", "bfloat16", "float16"}
        if dtype is not None and dtype not in dtypes:
            raise ValueError(
                f"dtype must be one of {sorted(dtypes)} or None (the checkpoint's), got {dtype!r}"
            )
        self.model = from_pretrained(model, dtype="auto" if dtype is None else dtype, device=device)
        guard_finite_hidden_states(self.model)
        self.taps, self.layout = list(taps), layout
        self.batch_tokens, self.batch_size = batch_tokens, batch_size
        recipe = recipe or Recipe()
        self.preparer = InputPreparer(self.model.config, self.model.checkpoint_dir, recipe)
        self.settings = run_settings(self.model, self.taps, recipe, layout, dtype)
        list(extract_latents(self.model, [], self.taps, layout=layout))  # unknown taps fail here

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "path" not in batch:
            raise ValueError(
                f"LatentsExtractor needs a 'path' column (and optionally 'name'), got {sorted(batch)}"
            )
        paths = [str(p) for p in batch["path"]]
        names = [str(n) for n in batch["name"]] if "name" in batch else [None] * len(paths)
        sources = [
            InputSource(name, path) if name is not None else expand_inputs([path])[0]
            for name, path in zip(names, paths)
        ]
        rows: list[tuple[bytes, bytes, str]] = [(b"", b"", "")] * len(sources)
        prepared: list[LatentInput] = []
        position: dict[int, int] = {}  # id(prepared input) -> its row
        for k, source in enumerate(sources):
            try:
                item = self.preparer(source)
            except BAD_INPUT as err:
                rows[k] = (b"", b"", f"{type(err).__name__}: {' '.join(str(err).split())}")
                continue
            prepared.append(item)
            position[id(item)] = k
        results = extract_latents(
            self.model,
            prepared,
            self.taps,
            batch_tokens=self.batch_tokens,
            batch_size=self.batch_size,
            layout=self.layout,
            errors="skip",
        )
        for result in results:
            if isinstance(result, Failed):
                rows[position[id(result.source)]] = (b"", b"", result.error)
                continue
            item, values = result
            metadata = record_metadata(self.model, item, self.taps, self.settings)
            record = safetensors_bytes(stored_tensors(values), metadata)
            rows[position[id(item)]] = (record, json.dumps(metadata).encode(), "")
        ordered = rows
        return {
            "__key__": np.array([sample_key(s.name) for s in sources], dtype=object),
            "safetensors": np.array([r[0] for r in ordered], dtype=object),
            "json": np.array([r[1] for r in ordered], dtype=object),
            "error": np.array([r[2] for r in ordered], dtype=object),
        }
