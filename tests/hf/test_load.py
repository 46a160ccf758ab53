"""convert -> load -> logits equal HF's; ours -> HF -> transformers `from_pretrained` -> same logits; the
loader maps files without copying or unpickling, verifies checksums, and explains what it cannot load."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hf_checkpoints import make_sources
from hf_models import HF_MODEL, PRESET, make_prompt, max_err, scale_of

from qwenvl_min import Config
from qwenvl_min.hf.load import load
from qwenvl_min.weights_convert import CheckpointError, convert_checkpoint, export_to_hf

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return {f: make_sources(tmp_path_factory.mktemp(f), f) for f in FAMILIES}


def _prompt(family: str):
    # an image of 8 x 12 patches: 24 merged tokens, several Qwen2.5 windows, text on both sides
    return make_prompt(Config.preset(PRESET[family]), [[5, ("image", (1, 8, 12)), 7]], seed=3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ("nested", "flat", "memory"))
def test_converted_checkpoint_gives_hf_logits(sources, tmp_path, family, layout):
    src, hf = sources[family][layout]
    model = load(convert_checkpoint(src, tmp_path / "ours", shard_size="200KB"), dtype=torch.float32)
    prompt = _prompt(family)
    with torch.no_grad():
        want = hf(**prompt.hf()).logits
        got = model(prompt.input_ids, **prompt.ours()).logits
    assert got.shape == want.shape
    assert max_err(got, want) <= 1e-5 * scale_of(want)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_the_same_logits(sources, tmp_path, family):
    src, hf = sources[family]["nested"]
    exported = export_to_hf(convert_checkpoint(src, tmp_path / "ours"), tmp_path / "hf", shard_size="300KB")
    reloaded = (
        HF_MODEL[family].from_pretrained(exported, dtype=torch.float32, attn_implementation="sdpa").eval()
    )
    assert (
        reloaded.config.text_config.tie_word_embeddings
        == Config.preset(PRESET[family]).text.tie_word_embeddings
    )
    prompt = _prompt(family)
    with torch.no_grad():
        assert torch.equal(reloaded(**prompt.hf()).logits, hf(**prompt.hf()).logits)


def test_dtype_argument_casts_on_load(sources, tmp_path):
    src, _ = sources["qwen2_5_vl"]["nested"]
    model = load(convert_checkpoint(src, tmp_path / "ours"), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training
    prompt = _prompt("qwen2_5_vl")
    with torch.no_grad():
        assert model(prompt.input_ids, **prompt.ours()).logits.dtype == torch.bfloat16


def test_weights_are_memory_mapped_and_never_unpickled(sources, tmp_path, monkeypatch):
    src, _ = sources["qwen2_vl"]["nested"]
    out = convert_checkpoint(src, tmp_path / "ours")
    shard = sorted(out.glob("*.safetensors"))[0]
    before = shard.read_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader must never unpickle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)
    model = load(out)
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(shard.resolve()) in maps.read_text()  # the shard is mapped, not read into memory
    with torch.no_grad():  # private mapping: changing a weight never changes the file
        for p in model.parameters():
            p.add_(1.0)
    assert shard.read_bytes() == before


def test_verify_catches_a_changed_shard(sources, tmp_path):
    src, _ = sources["qwen2_vl"]["nested"]
    out = convert_checkpoint(src, tmp_path / "ours")
    load(out, verify=True)
    shard = sorted(out.glob("*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one bit-rotten byte in the tensor data: the header still parses
    shard.write_bytes(bytes(data))
    load(out)  # without verify only the structure is checked
    with pytest.raises(CheckpointError, match=f"sha256 changed.*{shard.name}"):
        load(out, verify=True)


def test_loading_an_hf_checkpoint_says_how_to_convert(sources):
    src, _ = sources["qwen2_vl"]["nested"]
    with pytest.raises(
        CheckpointError,
        match=r"Hugging Face checkpoint.*QwenVL.from_pretrained loads it as it is, and `qwenvl-min convert ",
    ):
        load(src)


def test_loading_a_missing_directory(tmp_path):
    with pytest.raises(
        CheckpointError, match="not a directory.*`qwenvl-min convert HF_CHECKPOINT_DIR_OR_HUB_ID OUTPUT_DIR`"
    ):
        load(tmp_path / "nowhere")


def test_missing_shard_and_extra_key_are_reported(sources, tmp_path):
    src, _ = sources["qwen2_5_vl"]["nested"]
    out = convert_checkpoint(src, tmp_path / "ours", shard_size="200KB")
    broken = shutil.copytree(out, tmp_path / "missing")
    shard = sorted(broken.glob("*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard {shard.name} .* is missing"):
        load(broken)

    from safetensors.torch import save_file

    save_file({"text.layers.0.attn.extra": torch.zeros(3)}, str(out / "extra.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    index["weight_map"]["text.layers.0.attn.extra"] = "extra.safetensors"
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"unexpected keys \[text\.layers\.0\.attn\.extra\]"):
        load(out)
