"""Every keyword transformers 5.24 takes on the calls users port (forward, generate, from_pretrained,
get_image_features / get_video_features) is either taken by ours or refused with a one-line error that
names what to use instead; never Python's bare "unexpected keyword argument".

The keyword lists are read from transformers itself (its signatures, `TransformersKwargs`, the fields of
`GenerationConfig`, the keywords its `from_pretrained` pops), so a keyword it adds shows up here."""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

import pytest
import torch
import transformers
from hf_models import build_pair, make_prompt, tiny_config
from transformers import GenerationConfig, Qwen2VLForConditionalGeneration
from transformers.utils.generic import TransformersKwargs

from qwenvl_min import QwenVL
from qwenvl_min.hf import keywords
from qwenvl_min.hf.generation import METADATA
from qwenvl_min.hf.keywords import UnsupportedKeyword

HF = Qwen2VLForConditionalGeneration


def _parameters(function) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds} - {
        "self",
        "cls",
    }


def _from_pretrained_keywords() -> set[str]:
    """The named parameters of transformers' from_pretrained and the keywords it pops from **kwargs (its
    private ones, and the long-gone mirror / from_tf / from_flax, left out)."""
    source = Path(inspect.getsourcefile(transformers.modeling_utils)).read_text()
    body = source[source.index("    def from_pretrained(") :]
    body = body[: body.index("\n    @", 1)]
    popped = set(re.findall(r'kwargs\.pop\("(\w+)"', body))
    retired = re.findall(r"for name in \[([^\]]*)\]:\n\s*_ = kwargs\.pop", body)[0]
    popped |= set(retired.replace('"', "").split(", "))
    named = _parameters(transformers.PreTrainedModel.from_pretrained.__func__)
    gone = {"pretrained_model_name_or_path", "model_args", "mirror", "from_tf", "from_flax"}
    return {name for name in named | popped if not name.startswith("_")} - gone


FORWARD = (_parameters(HF.forward) | set(TransformersKwargs.__annotations__)) - {"kwargs"}
GENERATE = (
    (_parameters(HF.generate) | set(GenerationConfig().to_dict()) | FORWARD) - {"kwargs"} - set(METADATA)
)
VISION = (
    _parameters(HF.get_image_features)
    | set(TransformersKwargs.__annotations__)
    | {"return_dict", "cu_seqlens", "max_seqlen", "position_ids", "window_index", "cu_window_seqlens"}
) - {"kwargs", "pixel_values", "image_grid_thw"}


@functools.cache
def model_and_batch():
    cfg = tiny_config("qwen2_vl", False)
    _, ours = build_pair(cfg, seed=1)
    return ours, make_prompt(cfg, [[3, ("image", (1, 4, 4)), 3]], seed=2)


def _refused(call, names: set[str], accepted: set[str], table: dict[str, str]) -> None:
    """Each name is taken, or refused on its own with the table's hint in one line."""
    for name in sorted(names - accepted):
        with pytest.raises(UnsupportedKeyword) as caught:
            call(name)
        message = str(caught.value)
        assert "\n" not in message and "unexpected keyword" not in message
        assert name in table, f"transformers keyword {name!r} has no entry saying what to use instead"
        assert f"{name}: {table[name]}" in message


def test_every_transformers_forward_keyword_is_taken_or_refused_with_a_hint():
    ours, prompt = model_and_batch()
    accepted = set(inspect.signature(QwenVL.forward).parameters) - {"self"}
    assert {"output_hidden_states", "output_attentions", "use_cache", "return_dict"} <= accepted
    _refused(lambda name: ours(**prompt.hf(), **{name: None}), FORWARD, accepted, keywords.FORWARD)


def test_every_transformers_generate_keyword_is_taken_or_refused_with_a_hint():
    ours, prompt = model_and_batch()
    accepted = set(inspect.signature(QwenVL.generate).parameters) - {"self", "unsupported"}
    call = lambda name: ours.generate(**prompt.hf(), max_new_tokens=1, **{name: None})  # noqa: E731
    _refused(call, GENERATE, accepted, keywords.GENERATE)


def test_every_transformers_from_pretrained_keyword_is_taken_or_refused_with_a_hint(tmp_path):
    names = _from_pretrained_keywords()
    assert {"device_map", "torch_dtype", "trust_remote_code", "quantization_config"} <= names
    accepted = set(inspect.signature(QwenVL.from_pretrained).parameters) - {"unsupported"}
    call = lambda name: QwenVL.from_pretrained(tmp_path, **{name: None})  # noqa: E731
    _refused(call, names, accepted, keywords.FROM_PRETRAINED)


@pytest.mark.parametrize("method", ["get_image_features", "get_video_features"])
def test_every_transformers_vision_features_keyword_is_taken_or_refused_with_a_hint(method):
    ours, prompt = model_and_batch()
    accepted = set(inspect.signature(getattr(QwenVL, method)).parameters) - {"self", "unsupported"}
    pixels, grid = prompt.pixel_values, prompt.image_grid_thw
    call = lambda name: getattr(ours, method)(pixels, grid, **{name: None})  # noqa: E731
    _refused(call, VISION, accepted, keywords.VISION_FEATURES)


def test_other_names_get_a_spelling_hint_or_the_list_of_keywords():
    ours, prompt = model_and_batch()
    with pytest.raises(
        UnsupportedKeyword,
        match=r"^QwenVL.forward does not take output_attention: did you mean output_attentions\?$",
    ):
        ours(**prompt.hf(), output_attention=True)
    with pytest.raises(
        UnsupportedKeyword, match=r"does not take zzz: its keywords are attention_mask, cache, "
    ):
        ours(**prompt.hf(), zzz=1)
    # several at once: all of them, in one line
    with pytest.raises(UnsupportedKeyword, match=r"inputs_embeds: .*; nor past_key_values: .*; nor zzz: "):
        ours(**prompt.hf(), past_key_values=None, inputs_embeds=None, zzz=1)
    # the model still runs, and positional misuse is still Python's own error
    with torch.no_grad():
        assert ours(**prompt.hf()).logits.shape[:2] == prompt.input_ids.shape


def test_output_router_logits_points_at_the_router_taps_that_exist():
    """Qwen3-VL-MoE: transformers' output_router_logits is refused with the tap path, and that path reads
    the router logits of every sparse layer."""
    cfg = tiny_config("qwen3_vl_moe", False)
    _, ours = build_pair(cfg, seed=0)
    prompt = make_prompt(cfg, [[3, ("image", (1, 8, 8)), 2]], seed=1)
    with pytest.raises(
        UnsupportedKeyword, match=r"output_router_logits: router logits are taps .*mlp\.router"
    ):
        ours(**prompt.hf(), output_router_logits=True)
    names = [f"text.layers.{i}.mlp.router" for i in cfg.text.moe.sparse_layers]
    with torch.no_grad(), ours.taps(read=names) as taps:
        ours(**prompt.hf())
    b, t = prompt.input_ids.shape
    assert [tuple(taps.cache[n].shape) for n in names] == [(b, t, cfg.text.moe.num_experts)] * len(names)
