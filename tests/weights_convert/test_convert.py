"""File conversion HF -> ours -> HF on tiny checkpoints of both families in every on-disk layout:
output layout, manifest, sharding, dtype option, bit-exact round trips, hub ids, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from hf_checkpoints import make_sources, read_dir
from hf_models import PRESET

from qwenvl_min import Config
from qwenvl_min.weights_convert import (
    convert_checkpoint,
    expected_shapes,
    export_to_hf,
    hf_state_dict_to_ours,
)
from qwenvl_min.weights_convert.cli import main as cli_main
from qwenvl_min.weights_convert.safetensors_io import read_header

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
LAYOUTS = ("nested", "flat", "memory")
SHARD = "200KB"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return {f: make_sources(tmp_path_factory.mktemp(f), f) for f in FAMILIES}


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_converted_layout_and_manifest(sources, tmp_path, family, layout):
    src, _ = sources[family][layout]
    cfg = Config.preset(PRESET[family])
    out = convert_checkpoint(src, tmp_path / "ours", shard_size=SHARD)

    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "qwenvl-min" and config["format_version"] == 1
    assert Config.from_dict({k: v for k, v in config.items() if not k.startswith("format")}) == cfg
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected_shapes(cfg))
    manifest = json.loads((out / "manifest.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and [r["file"] for r in manifest["shards"]] == shards
    for record in manifest["shards"]:
        assert record["sha256"] == _sha256(out / record["file"])
        assert record["bytes"] == (out / record["file"]).stat().st_size
    assert (
        manifest["key_count"] == len(expected_shapes(cfg)) == sum(r["key_count"] for r in manifest["shards"])
    )
    assert manifest["source"]["path"] == str(src.resolve())
    assert manifest["source"]["layout"] == ("transformers5" if layout == "memory" else "published")
    assert manifest["dtype"] == ("bfloat16" if layout == "flat" else "float32")
    dropped = {"memory": ["model.language_model.rotary_emb.inv_freq", "model.visual.rotary_pos_emb.inv_freq"]}
    expected_dropped = dropped.get(layout, []) + (
        ["lm_head.weight"] if layout == "memory" and family == "qwen2_vl" else []
    )
    assert manifest["dropped_source_keys"] == sorted(expected_dropped)

    # values: exactly the mapping applied to the source tensors, in the source dtype
    source = {k: v for k, v in read_dir(src).items() if not k.endswith("inv_freq")}
    want = hf_state_dict_to_ours(cfg, source)
    got = read_dir(out)
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


def test_shards_respect_the_size_limit(sources, tmp_path):
    src, _ = sources["qwen2_5_vl"]["nested"]
    out = convert_checkpoint(src, tmp_path / "ours", shard_size="150KB")
    for path in out.glob("*.safetensors"):
        tensors = read_header(path).tensors.values()
        data = sum(t.end - t.start for t in tensors)
        assert data <= 150_000 or len(tensors) == 1, path.name  # a larger tensor gets a shard of its own


def test_dtype_option_casts_every_tensor(sources, tmp_path):
    src, _ = sources["qwen2_vl"]["nested"]
    out = convert_checkpoint(src, tmp_path / "ours", dtype="bf16")
    ref = read_dir(convert_checkpoint(src, tmp_path / "ref"))
    got = read_dir(out)
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "bfloat16"
    for key, tensor in ref.items():
        assert got[key].dtype == torch.bfloat16 and torch.equal(got[key], tensor.to(torch.bfloat16)), key


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ("nested", "flat"))
def test_round_trip_is_bit_exact(sources, tmp_path, family, layout):
    """HF -> ours -> HF gives the source tensors back; ours -> HF -> ours gives byte-identical shards."""
    src, _ = sources[family][layout]
    ours = convert_checkpoint(src, tmp_path / "ours", shard_size=SHARD)
    back = export_to_hf(ours, tmp_path / "hf", shard_size=SHARD)
    original, exported = read_dir(src), read_dir(back)
    assert set(exported) == set(original)
    for key, tensor in original.items():
        assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key
    again = convert_checkpoint(back, tmp_path / "ours_again", shard_size=SHARD)
    first = {p.name: _sha256(p) for p in ours.glob("*.safetensors")}
    assert {p.name: _sha256(p) for p in again.glob("*.safetensors")} == first


def test_export_writes_a_loadable_hf_config(sources, tmp_path):
    src, _ = sources["qwen2_5_vl"]["flat"]
    back = export_to_hf(convert_checkpoint(src, tmp_path / "ours"), tmp_path / "hf")
    config = json.loads((back / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["dtype"] == "bfloat16"
    assert config["vision_config"]["tokens_per_second"] == 2.0  # set explicitly, never HF's class default
    assert json.loads((back / "manifest.json").read_text())["layout"] == "huggingface"


def test_hub_id_goes_through_snapshot_download(sources, tmp_path, monkeypatch):
    import huggingface_hub

    src, _ = sources["qwen2_vl"]["nested"]
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(src)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    out = convert_checkpoint("Qwen/Qwen2-VL-2B-Instruct", tmp_path / "ours")
    assert calls and calls[0][0] == "Qwen/Qwen2-VL-2B-Instruct"
    assert "*.safetensors" in calls[0][1] and not any(".bin" in p for p in calls[0][1])  # never pickles
    assert "tokenizer.json" in calls[0][1]  # the tokenizer comes along for `qwenvl-min run`
    source = json.loads((out / "manifest.json").read_text())["source"]
    assert source["hub_id"] == "Qwen/Qwen2-VL-2B-Instruct" and source["path"] == str(src.resolve())


def test_force_replaces_an_earlier_output(sources, tmp_path, capsys):
    src, _ = sources["qwen2_vl"]["nested"]
    dst = convert_checkpoint(src, tmp_path / "ours", dtype="bfloat16")
    convert_checkpoint(src, dst, force=True, progress=True)
    assert "writing ours" in capsys.readouterr().err  # the tqdm bar
    assert json.loads((dst / "manifest.json").read_text())["dtype"] == "float32"
    assert [p.name for p in tmp_path.iterdir()] == ["ours"]  # no temporary or old directories left


def test_cli_both_directions(sources, tmp_path, capsys):
    src, _ = sources["qwen2_5_vl"]["nested"]
    assert cli_main([str(src), str(tmp_path / "ours"), "--shard-size", "1MB", "--no-progress"]) == 0
    assert cli_main([str(tmp_path / "ours"), str(tmp_path / "hf"), "--to-hf", "--dtype", "bfloat16"]) == 0
    captured = capsys.readouterr()
    assert f"wrote: {tmp_path / 'hf'}" in captured.err and captured.out == ""  # status, on stderr
    assert read_dir(tmp_path / "hf")["lm_head.weight"].dtype == torch.bfloat16
    assert cli_main([str(src), str(tmp_path / "ours")]) == 1  # exists, no --force
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'ours'} already exists; pass --force to replace it\n"  # the flag only
    assert cli_main([str(tmp_path / "hf"), str(tmp_path / "back"), "--to-hf"]) == 1
    err = capsys.readouterr().err
    assert "is already a Hugging Face checkpoint" in err and "python -m" not in err and err.count("\n") == 1
    assert cli_main([str(src), str(tmp_path / "half"), "--dtype", "half", "-q"]) == 0  # the one dtype table
    assert capsys.readouterr().err == ""  # -q: no status line
    assert read_dir(tmp_path / "half")["text.norm.weight"].dtype == torch.float16


def test_module_entry_point(sources, tmp_path):
    src, _ = sources["qwen2_vl"]["nested"]
    run = subprocess.run(
        [sys.executable, "-m", "qwenvl_min.weights_convert", str(src), str(tmp_path / "ours")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "ours" / "manifest.json").is_file()


def test_tokenizer_and_processor_files_travel_with_the_weights(sources, tmp_path):
    """tokenizer.json & co. are copied both ways unchanged and recorded with checksums, so a converted
    directory is all `qwenvl-min run` needs; files that are not companions (e.g. a README) are not."""
    base, _ = sources["qwen2_vl"]["nested"]
    src = tmp_path / "src"
    src.mkdir()
    for item in base.iterdir():
        (src / item.name).write_bytes(item.read_bytes())
    (src / "tokenizer.json").write_text('{"version": "1.0", "model": {}}')
    (src / "generation_config.json").write_text('{"eos_token_id": 151645}')
    (src / "README.md").write_text("not a companion")
    ours = convert_checkpoint(src, tmp_path / "ours")
    for name in ("tokenizer.json", "generation_config.json"):
        assert (ours / name).read_bytes() == (src / name).read_bytes()
    assert not (ours / "README.md").exists()
    recorded = json.loads((ours / "manifest.json").read_text())["companion_files"]
    assert recorded == [
        {"file": name, "sha256": _sha256(src / name)} for name in ("tokenizer.json", "generation_config.json")
    ]
    back = export_to_hf(ours, tmp_path / "hf")
    assert (back / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
