"""Every bad input stops the conversion with a message that names the problem, and leaves no DST (nor
any temporary directory) behind; SRC is never modified."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hf_checkpoints import make_sources
from safetensors.torch import save_file

from qwenvl_min.weights_convert import CheckpointError, convert, convert_checkpoint, export_to_hf

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Good checkpoints of both families; each test works on a copy."""
    return {f: make_sources(tmp_path_factory.mktemp(f), f) for f in ("qwen2_vl", "qwen2_5_vl")}


@pytest.fixture
def src(pristine, tmp_path):
    """A sharded Qwen2.5-VL checkpoint (save_pretrained layout) to break."""
    return shutil.copytree(pristine["qwen2_5_vl"]["nested"][0], tmp_path / "src")


def _digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _fails(src, tmp_path, match: str, **kwargs) -> str:
    """Convert, expect CheckpointError matching `match`, check nothing was written and SRC is intact."""
    before = _digest(src)
    dst = tmp_path / "out" / "converted"
    with pytest.raises(CheckpointError, match=match) as info:
        convert_checkpoint(src, dst, **kwargs)
    assert not dst.exists()
    leftovers = list(dst.parent.iterdir()) if dst.parent.exists() else []
    assert leftovers == [], leftovers  # no .partial-* directories
    assert _digest(src) == before
    return str(info.value)


def _index(src) -> dict:
    return json.loads((src / INDEX).read_text())


def _write_index(src, index) -> None:
    (src / INDEX).write_text(json.dumps(index))


def _first_shard(src):
    return src / sorted(set(_index(src)["weight_map"].values()))[0]


def test_truncated_shard(src, tmp_path):
    shard = _first_shard(src)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    message = _fails(src, tmp_path, "truncated")
    assert shard.name in message


def test_corrupt_header(src, tmp_path):
    shard = _first_shard(src)
    data = bytearray(shard.read_bytes())
    data[8:40] = b"\xff" * 32
    shard.write_bytes(bytes(data))
    message = _fails(src, tmp_path, "corrupt")
    assert shard.name in message


def test_not_a_safetensors_file(src, tmp_path):
    _first_shard(src).write_bytes(b"PK\x03\x04 a zip file, not safetensors")
    _fails(src, tmp_path, "not safetensors|truncated")


def test_missing_shard_named_in_index(src, tmp_path):
    shard = _first_shard(src)
    shard.unlink()
    message = _fails(src, tmp_path, "missing")
    assert shard.name in message


def test_index_names_a_key_its_shard_does_not_hold(src, tmp_path):
    index = _index(src)
    key = next(k for k, v in index["weight_map"].items() if v != _first_shard(src).name)
    index["weight_map"][key] = _first_shard(src).name  # the key really lives in another shard
    _write_index(src, index)
    message = _fails(src, tmp_path, "does not hold|does not list")
    assert key in message


def test_unknown_key(src, tmp_path):
    save_file({"model.layers.0.mlp.extra_proj.weight": torch.zeros(2)}, str(src / "extra.safetensors"))
    index = _index(src)
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = "extra.safetensors"
    _write_index(src, index)
    _fails(src, tmp_path, r"not part of a Qwen2-VL.*model\.layers\.0\.mlp\.extra_proj\.weight")


def test_missing_key(src, tmp_path):
    index = _index(src)
    # drop a key from the index and from its shard (rewritten without it)
    key = "model.layers.1.post_attention_layernorm.weight"
    shard = src / index["weight_map"].pop(key)
    from safetensors.torch import load_file

    tensors = load_file(str(shard))
    del tensors[key]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    _write_index(src, index)
    _fails(src, tmp_path, rf"missing.*{key}")


def test_shape_mismatch_against_config(src, tmp_path):
    config = json.loads((src / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 100  # the weights have 128
    (src / "config.json").write_text(json.dumps(config))
    _fails(src, tmp_path, r"do not match the config.*mlp\.(down|gate|up)_proj\.weight")


def test_config_of_another_model(src, tmp_path):
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "llava"
    (src / "config.json").write_text(json.dumps(config))
    _fails(src, tmp_path, "unsupported model_type 'llava'")


def test_missing_config(src, tmp_path):
    (src / "config.json").unlink()
    _fails(src, tmp_path, "config.json is missing")


def test_pickle_only_checkpoint_is_refused(src, tmp_path):
    for path in src.glob("*.safetensors*"):
        path.unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle bytes")
    _fails(src, tmp_path, "never unpickles")


def test_tied_lm_head_that_differs_from_embeddings(pristine, tmp_path):
    """Qwen2-VL tiny is tied; a stored lm_head must equal the embeddings to be dropped."""
    src = shutil.copytree(pristine["qwen2_vl"]["memory"][0], tmp_path / "src")
    from safetensors.torch import load_file

    tensors = load_file(str(src / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    _fails(src, tmp_path, "tie_word_embeddings")


def test_two_keys_for_one_tensor(pristine, tmp_path):
    src = shutil.copytree(pristine["qwen2_vl"]["memory"][0], tmp_path / "src")
    from safetensors.torch import load_file

    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.language_model.norm.weight"].clone()  # both layouts
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    _fails(src, tmp_path, "both map to 'text.norm.weight'")


def test_destination_exists(src, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"already exists; pass force=True to replace it$"):
        convert_checkpoint(src, dst)  # the Python argument here; the CLI names --force (test_convert.py)
    with pytest.raises(CheckpointError, match="refusing to replace"):  # --force only replaces our outputs
        convert_checkpoint(src, dst, force=True)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]


def test_destination_not_writable(src, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot write into"):
        convert_checkpoint(src, blocker / "converted")


def test_destination_directory_read_only(src, tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new entries even to root
        with pytest.raises(CheckpointError, match="cannot write into /proc"):
            convert_checkpoint(src, Path("/proc") / "converted")
        return
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write into"):
            convert_checkpoint(src, parent / "converted")
    finally:
        parent.chmod(0o700)


def test_destination_inside_source(src, tmp_path):
    with pytest.raises(CheckpointError, match="overlaps the source"):
        convert_checkpoint(src, src / "converted")
    with pytest.raises(CheckpointError, match="refusing to replace"):  # SRC is no converter output
        convert_checkpoint(src, src, force=True)
    ours = convert_checkpoint(src, tmp_path / "ours")
    with pytest.raises(CheckpointError, match="overlaps the source"):
        export_to_hf(ours, ours, force=True)
    assert not (src / "converted").exists() and (ours / "manifest.json").is_file()


@pytest.mark.parametrize("dtype", ["float13", "int8", "auto"])
def test_invalid_dtype(src, tmp_path, dtype):
    _fails(src, tmp_path, f"invalid dtype '{dtype}'", dtype=dtype)


@pytest.mark.parametrize("size", ["0", "-1GB", "lots", "5PB"])
def test_invalid_shard_size(src, tmp_path, size):
    _fails(src, tmp_path, "invalid shard size", shard_size=size)


def test_source_does_not_exist(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")


def test_hub_id_offline(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and nothing is cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="could not be downloaded.*local-dir DIR.*pass DIR instead"):
        convert_checkpoint("Qwen/Qwen2.5-VL-7B-Instruct", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failure_while_writing_leaves_nothing(src, tmp_path, monkeypatch):
    """A write error halfway (disk full, a vanished source file) removes the partial output."""
    real_read, calls = convert._read, []

    def failing_read(item):
        calls.append(item)
        if len(calls) == 20:
            raise OSError(28, "No space left on device")
        return real_read(item)

    monkeypatch.setattr(convert, "_read", failing_read)
    _fails(src, tmp_path, "No space left on device")
    assert len(calls) == 20


def test_failure_during_force_keeps_the_old_output(src, tmp_path, monkeypatch):
    dst = convert_checkpoint(src, tmp_path / "ours")
    before = _digest(dst)

    def broken_read(item):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(convert, "_read", broken_read)
    with pytest.raises(CheckpointError, match="Input/output error"):
        convert_checkpoint(src, dst, force=True)
    assert _digest(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ours", "src"]


def test_export_refuses_an_hf_checkpoint(src, tmp_path):
    with pytest.raises(
        CheckpointError, match="is already a Hugging Face checkpoint: .*QwenVL.from_pretrained"
    ):
        export_to_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_load_names_the_command_that_converts(src):
    from qwenvl_min.hf.load import load

    with pytest.raises(CheckpointError, match=f"`qwenvl-min convert {src} OUTPUT_DIR` converts it"):
        load(src)


def test_convert_refuses_our_own_checkpoint(src, tmp_path):
    ours = convert_checkpoint(src, tmp_path / "ours")
    with pytest.raises(CheckpointError, match="already a qwenvl-min checkpoint"):
        convert_checkpoint(ours, tmp_path / "again")
