"""Tiny Hugging Face checkpoints on disk, in every layout the converter must accept.

- `save_nested`: `save_pretrained` with a small max_shard_size (transformers 5: nested config.json,
  published key names, many shards).
- `save_published_flat`: what the Hub serves for the released models: keys `visual.*`, `model.*`,
  `lm_head.*` (renamed here by hand from the in-memory `model.visual.*` / `model.language_model.*`), a
  flat 4.x config.json (text fields at the top level, `rope_scaling: {type: mrope}`, old vision
  model_type and `in_chans`), bf16 tensors, sharded with an index.
- `save_in_memory_layout`: the transformers-5 in-memory key names in one model.safetensors, plus rotary
  `inv_freq` buffers (which must be dropped) and, for tied models, a stored lm_head equal to the embeddings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from qwenvl_min import Config

SHARD = "200KB"  # the tiny models are ~2 MB: about ten shards


def save_nested(hf_model, directory: Path) -> Path:
    hf_model.save_pretrained(directory, max_shard_size=SHARD)
    return directory


def to_published_key(key: str) -> str:
    key = re.sub(r"^model\.visual\.", "visual.", key)
    return re.sub(r"^model\.language_model\.", "model.", key)


def flat_config(cfg: Config) -> dict:
    """The 4.x flat config.json of a released checkpoint, for one of our configs."""
    nested = cfg.to_hf()
    text = nested.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {**nested, **{k: v for k, v in text.items() if k != "model_type"}}
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    vision = dict(nested["vision_config"], model_type=cfg.model_type)  # old checkpoints' vision model_type
    if cfg.model_type == "qwen2_vl":
        vision["in_chans"] = vision.pop("in_channels")
    flat["vision_config"] = vision
    flat["torch_dtype"] = "bfloat16"
    return flat


def save_published_flat(hf_model, cfg: Config, directory: Path) -> Path:
    """Casts the tensors to bf16; round the HF model to bf16 first to compare logits exactly."""
    state = {to_published_key(k): v.detach().to(torch.bfloat16) for k, v in hf_model.state_dict().items()}
    if cfg.text.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    write_sharded(directory, state, per_shard=10)
    (directory / "config.json").write_text(json.dumps(flat_config(cfg), indent=2))
    return directory


def save_in_memory_layout(hf_model, cfg: Config, directory: Path) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    state["model.visual.rotary_pos_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
    state["model.language_model.rotary_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
    if cfg.text.tie_word_embeddings:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].clone()
    directory.mkdir(parents=True)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
    return directory


def write_sharded(directory: Path, state: dict[str, Tensor], per_shard: int) -> None:
    """Shards of `per_shard` tensors and an HF index, as save_pretrained lays them out."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    groups = [keys[i : i + per_shard] for i in range(0, len(keys), per_shard)]
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: state[k].contiguous() for k in group}, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def round_to_bf16_(hf_model) -> None:
    """Make the fp32 model hold exactly bf16-representable weights (so a bf16 file is lossless)."""
    with torch.no_grad():
        for p in hf_model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def read_dir(directory: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory (any sharding) through the safetensors library."""
    from safetensors.torch import load_file

    out: dict[str, Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def make_sources(root: Path, family: str) -> dict[str, tuple[Path, object]]:
    """{layout name: (checkpoint dir, the fp32 HF model whose weights it holds)} for one family; the
    family's tiny preset decides tying (Qwen2-VL tied, Qwen2.5-VL not), so both cases are covered."""
    from hf_models import PRESET, build_hf

    cfg = Config.preset(PRESET[family])
    hf = build_hf(cfg, seed=0)
    hf_bf16 = build_hf(cfg, seed=1)
    round_to_bf16_(hf_bf16)
    return {
        "nested": (save_nested(hf, root / "nested"), hf),
        "flat": (save_published_flat(hf_bf16, cfg, root / "flat"), hf_bf16),
        "memory": (save_in_memory_layout(hf, cfg, root / "memory"), hf),
    }
