"""`QwenVL.from_pretrained` on HF checkpoint directories (every layout `save_pretrained` and the Hub produce),
Hub ids (snapshot_download mocked; offline is one clear error), our converted directories, dtype handling,
strictness; and `from_hf` copying by default (share=True is the explicit opt-in) with HF config objects."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hf_checkpoints import make_sources
from hf_models import PRESET, build_hf, make_prompt, max_err, scale_of
from safetensors.torch import load_file, save_file

from qwenvl_min import Config, QwenVL
from qwenvl_min.weights_convert import CheckpointError, convert_checkpoint

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return {f: make_sources(tmp_path_factory.mktemp(f), f) for f in FAMILIES}


def _logits(model, hf, family):
    prompt = make_prompt(Config.preset(PRESET[family]), [[5, ("image", (1, 8, 12)), 7]], seed=3)
    with torch.no_grad():
        return model(**prompt.hf()).logits, hf(**prompt.hf()).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ("nested", "flat", "memory"))
def test_hf_directory_gives_hf_logits(sources, family, layout):
    src, hf = sources[family][layout]
    model = QwenVL.from_pretrained(src, dtype=torch.float32)
    assert model.checkpoint_dir == src.resolve() and not model.training
    got, want = _logits(model, hf, family)
    # same fp32 weights (the flat layout holds bf16-exact values), same math: fp32 reduction-order noise
    assert max_err(got, want) <= 1e-5 * scale_of(want)


def test_auto_dtype_follows_the_config_and_views_the_files(sources):
    src, _ = sources["qwen2_5_vl"]["flat"]  # config.json says torch_dtype bfloat16, the shards hold bf16
    model = QwenVL.from_pretrained(src)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # the parameters are private (copy-on-write) views of the shards: changing ours never changes the files
    before = {path.name: path.read_bytes() for path in src.glob("*.safetensors")}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert {path.name: path.read_bytes() for path in src.glob("*.safetensors")} == before
    for spelling in ("float16", "half", "FP16", "torch.float16"):  # the one table, qwenvl_min.utils.dtypes
        cast = QwenVL.from_pretrained(src, dtype=spelling)
        assert {p.dtype for p in cast.parameters()} == {torch.float16}, spelling


def test_converted_directory_goes_through_load(sources, tmp_path):
    src, hf = sources["qwen2_vl"]["nested"]
    ours = convert_checkpoint(src, tmp_path / "ours")
    model = QwenVL.from_pretrained(ours, dtype=torch.float32)
    got, want = _logits(model, hf, "qwen2_vl")
    assert max_err(got, want) <= 1e-5 * scale_of(want)


def test_unknown_key_is_refused(sources, tmp_path):
    src, _ = sources["qwen2_vl"]["memory"]
    bad = shutil.copytree(src, tmp_path / "bad")
    state = load_file(str(bad / "model.safetensors"))
    state["model.visual.extra_probe.weight"] = torch.zeros(2)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unknown Hugging Face keys.*extra_probe"):
        QwenVL.from_pretrained(bad)


def test_missing_shard_and_bad_dtype(sources, tmp_path):
    src, _ = sources["qwen2_5_vl"]["nested"]
    with pytest.raises(CheckpointError, match="invalid dtype 'int8'"):
        QwenVL.from_pretrained(src, dtype="int8")
    with pytest.raises(CheckpointError, match="cannot hold model weights"):
        QwenVL.from_pretrained(src, dtype=torch.int64)
    broken = shutil.copytree(src, tmp_path / "broken")
    next(broken.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard model-00002.* is missing"):
        QwenVL.from_pretrained(broken)


def test_hub_id_through_snapshot_download(sources, monkeypatch):
    import huggingface_hub

    src, hf = sources["qwen2_vl"]["nested"]
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(src)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = QwenVL.from_pretrained("Qwen/Qwen2-VL-2B-Instruct", dtype=torch.float32)
    assert calls[0][0] == "Qwen/Qwen2-VL-2B-Instruct"
    assert "preprocessor_config.json" in calls[0][1] and "generation_config.json" in calls[0][1]
    got, want = _logits(model, hf, "qwen2_vl")
    assert max_err(got, want) <= 1e-5 * scale_of(want)


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and nothing is cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="could not be downloaded.*offline") as info:
        QwenVL.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct")
    assert "\n" not in str(info.value)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        QwenVL.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="unsupported model_type 'llama'"):
        QwenVL.from_pretrained(tmp_path)


# ---- from_hf ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_copies_by_default_and_takes_a_config_object(family):
    cfg = Config.preset(PRESET[family])
    hf = build_hf(cfg, seed=0)
    model = QwenVL.from_hf(hf.config, hf.state_dict())  # a transformers config object, not a dict
    assert model.config == Config.from_hf(cfg.to_hf())
    before = hf.model.language_model.embed_tokens.weight.detach().clone()
    with torch.no_grad():
        model.text.embed_tokens.weight.zero_()
        for p in model.parameters():
            p.mul_(0)
    assert torch.equal(hf.model.language_model.embed_tokens.weight, before)
    assert hf.model.visual.blocks[0].attn.qkv.weight.abs().sum() > 0


def test_from_hf_share_is_explicit():
    cfg = Config.preset(PRESET["qwen2_5_vl"])
    hf = build_hf(cfg, seed=0)
    shared = QwenVL.from_hf(hf.config.to_dict(), hf.state_dict(), share=True)
    with torch.no_grad():
        shared.text.embed_tokens.weight.zero_()
    assert hf.model.language_model.embed_tokens.weight.abs().sum() == 0  # documented: the same storage
    with pytest.raises(TypeError, match="share must be True or False"):
        QwenVL.from_hf(cfg.to_hf(), hf.state_dict(), share="yes")
