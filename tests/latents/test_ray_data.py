"""The Ray Data path on a local Ray instance with 2 CPUs: `LatentsExtractor` in `map_batches` gives the CLI's
records (the same metadata; tensors within the fp32 rule, 1e-5 x max(1, max |CLI|), since Ray may cut the
inputs into other packs), failed inputs as rows with their error, and `write_webdataset(..., encoder=None)`
writes samples the `webdataset` library reads back under the CLI's keys.

One Ray instance for the whole session (starting one costs seconds), shut down at the end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from faults import tiny_hf_checkpoint
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from qwenvl_min.cli.main import main
from qwenvl_min.latents.ray_data import LatentsExtractor, inputs_dataset

TAPS = ["visual.merger.input", "text.layers.1"]
TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    checkpoint = tiny_hf_checkpoint(root / "hf", context=512)
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate([(64, 56), (90, 60), (56, 112)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "sub" / f"im.{k}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return checkpoint, folder


def test_map_batches_gives_the_cli_records(ray_cluster, inputs, tmp_path, capsys):
    ray = ray_cluster
    checkpoint, folder = inputs
    cli_out = tmp_path / "cli"
    argv = [
        "latents",
        "--model",
        str(checkpoint),
        "--taps",
        ",".join(TAPS),
        "--out",
        str(cli_out),
        "--no-progress",
    ]
    assert main([*argv, "--workers", "0", str(folder)]) == 1  # the broken image
    capsys.readouterr()

    rows = (
        inputs_dataset([str(folder)])
        .map_batches(
            LatentsExtractor,
            fn_constructor_kwargs={"model": str(checkpoint), "taps": TAPS},
            batch_size=2,
            compute=ray.data.ActorPoolStrategy(size=1),
        )
        .take_all()
    )
    by_key = {row["__key__"]: row for row in rows}
    assert sorted(by_key) == ["broken", "sub/im_0", "sub/im_1", "sub/im_2"]
    assert by_key["broken"]["safetensors"] == b"" and "PIL can read" in by_key["broken"]["error"]
    for k in range(3):
        row = by_key[f"sub/im_{k}"]
        assert row["error"] == ""
        with safe_open(str(cli_out / "sub" / f"im.{k}.safetensors"), "pt") as f:
            want = {key: f.get_tensor(key) for key in f.keys()}
            want_meta = f.metadata()
        got = load_safetensors(row["safetensors"])
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            scale = max(1.0, value.abs().max().item())
            assert (got[key] - value).abs().max().item() <= TOLERANCE * scale, key
        meta = json.loads(row["json"])
        assert {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()} == want_meta

    # the documented recipe: the good rows, written as WebDataset shards and read back with the library
    import webdataset as wds

    good = ray.data.from_items(rows).filter(lambda row: not row["error"]).drop_columns(["error"])
    shards = tmp_path / "shards"
    good.write_webdataset(str(shards), encoder=None)
    samples = {
        s["__key__"]: s for s in wds.WebDataset(sorted(map(str, shards.glob("*.tar"))), shardshuffle=False)
    }
    assert sorted(samples) == ["sub/im_0", "sub/im_1", "sub/im_2"]
    for key, sample in samples.items():
        assert sample["safetensors"] == by_key[key]["safetensors"] and sample["json"] == by_key[key]["json"]
    shutil.rmtree(shards)


def test_extractor_refuses_what_the_cli_refuses(inputs):
    checkpoint, folder = inputs
    with pytest.raises(ValueError, match="unknown tap name"):
        LatentsExtractor(str(checkpoint), ["visual.blocks.99"])
    extractor = LatentsExtractor(str(checkpoint), ["visual.merger"])
    with pytest.raises(ValueError, match="'path' column"):
        extractor({"file": np.array(["x"], dtype=object)})
    out = extractor({"path": np.array([str(folder / "sub" / "im.0.png")], dtype=object)})
    assert list(out["__key__"]) == ["im_0"] and out["error"][0] == ""  # no name column: the file's stem
    assert torch.is_tensor(load_safetensors(out["safetensors"][0])["visual.merger"])
