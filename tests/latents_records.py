"""Reading what `latents` wrote, for the tests: safetensors files and WebDataset shards (with the
`webdataset` library, as users read them)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load as load_safetensors


def read_files(directory: Path) -> dict:
    """{path inside OUT: (tensors, header metadata)} of every .safetensors file."""
    found = {}
    for path in sorted(directory.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            found[path.relative_to(directory).as_posix()] = (
                {k: f.get_tensor(k) for k in f.keys()},
                f.metadata(),
            )
    return found


def read_shards(directory: Path) -> dict:
    """{key: (tensors, JSON metadata)} of every sample in OUT's complete shards."""
    import webdataset as wds

    shards = sorted(str(p) for p in directory.glob("shard-*.tar"))
    samples = {}
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        samples[sample["__key__"]] = (load_safetensors(sample["safetensors"]), json.loads(sample["json"]))
    return samples
