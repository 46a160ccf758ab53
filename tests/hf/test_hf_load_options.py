"""transformers' `from_pretrained` keywords on `QwenVL.from_pretrained`: torch_dtype (= dtype), device_map
(one device), attn_implementation (the kernel choice), and one-line errors for the rest; against
transformers 5.24 loading the same directory (`Qwen2VLForConditionalGeneration.from_pretrained`).

device_map placements other than the CPU need a GPU; here they are checked up to the device check (a CUDA
request on this CPU-only machine is the device check's one-line error) and `device_option`'s choice with
the GPU count patched. transformers' own device_map needs accelerate, which the test environment does
not install, so its side loads without one.
"""

from __future__ import annotations

import pytest
import torch
from hf_checkpoints import save_nested
from hf_models import HF_MODEL, build_hf, make_prompt, max_err, scale_of, tiny_config

from qwenvl_min import QwenVL
from qwenvl_min.hf import load_options
from qwenvl_min.hf.keywords import UnsupportedKeyword
from qwenvl_min.model import attention, rope
from qwenvl_min.weights_convert import CheckpointError

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {
        f: save_nested(build_hf(tiny_config(f, False), seed=4), tmp_path_factory.mktemp(f)) for f in FAMILIES
    }


def _logits(model, family):
    prompt = make_prompt(tiny_config(family, False), [[4, ("image", (1, 8, 12)), 5]], seed=9)
    with torch.no_grad():
        return model(**prompt.hf()).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_dtype_is_dtype(checkpoints, family):
    path = checkpoints[family]
    hf32 = HF_MODEL[family].from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    hf16 = HF_MODEL[family].from_pretrained(path, torch_dtype=torch.bfloat16, attn_implementation="eager")
    ours16 = QwenVL.from_pretrained(path, torch_dtype=torch.bfloat16, attn_implementation="eager")
    assert {p.dtype for p in ours16.parameters()} == {p.dtype for p in hf16.parameters()} == {torch.bfloat16}
    # a thin alias: the same model as dtype= gives, bit for bit
    same = QwenVL.from_pretrained(path, dtype="bfloat16")
    assert torch.equal(_logits(ours16, family), _logits(same, family))
    # bf16 rule: against the fp32 model our error is at most twice transformers-bf16's own plus one bf16 ulp
    # of the output scale
    ref = _logits(hf32, family)
    ours_err = max_err(_logits(ours16, family).float(), ref)
    hf_err = max_err(_logits(hf16, family).float(), ref)
    assert ours_err <= 2 * hf_err + 2**-8 * scale_of(ref)
    # "auto": the dtype config.json names (save_pretrained of an fp32 model writes float32)
    auto = QwenVL.from_pretrained(path, torch_dtype="auto")
    assert {p.dtype for p in auto.parameters()} == {
        p.dtype for p in HF_MODEL[family].from_pretrained(path, torch_dtype="auto").parameters()
    }


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attn_implementation_eager_and_sdpa_are_the_torch_path(checkpoints, attn):
    family = "qwen2_5_vl"
    ours = QwenVL.from_pretrained(checkpoints[family], attn_implementation=attn)
    hf = HF_MODEL[family].from_pretrained(checkpoints[family], attn_implementation=attn)
    for block in ours.visual.blocks:
        assert (
            block.attn.attend is attention.segment_attention_torch and block.attn.rotary is rope.apply_rotary
        )
    for layer in ours.text.layers:
        assert layer.attn.attend is attention.causal_attention and layer.attn.rotary is rope.apply_rotary
    got, want = _logits(ours, family), _logits(hf, family)
    assert max_err(got, want) <= 1e-5 * scale_of(want)


def test_device_map_places_the_whole_model_on_one_device(checkpoints):
    path = checkpoints["qwen2_vl"]
    reference = _logits(QwenVL.from_pretrained(path), "qwen2_vl")
    # this machine has no GPU: "auto" is the CPU; {"": device} is one device too
    for device_map in ("cpu", "auto", {"": "cpu"}, torch.device("cpu")):
        model = QwenVL.from_pretrained(path, device_map=device_map)
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        assert torch.equal(_logits(model, "qwen2_vl"), reference)


def test_device_map_auto_is_the_one_gpu_and_refuses_several(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert load_options.device_option(None, "auto") == torch.device("cuda:0")
    assert load_options.device_option(None, 0) == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(
        CheckpointError, match="device_map='auto' with 2 GPUs would split.*docs/distributed.md"
    ):
        load_options.device_option(None, "auto")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(device_map="balanced"),
            "device_map='balanced' would split the model.*tensor parallelism.*docs/distributed.md",
        ),
        (dict(device_map="sequential"), "would split the model"),
        (dict(device_map={"visual": "cpu", "text": "cpu"}), "a device_map of 2 entries would split"),
        (dict(device_map="cuda"), "device_map='cuda': CUDA is not available"),
        (dict(device_map=1), "device_map='cuda:1': CUDA is not available"),
        (dict(device_map=[0]), "device_map must be a device"),
        (dict(device="cpu", device_map="cpu"), "both given; pass one"),
        (dict(dtype="float16", torch_dtype="bfloat16"), "both given; pass one.*older name"),
        (dict(torch_dtype="int8"), "invalid dtype 'int8'"),
        (dict(attn_implementation="flash_attention_2"), "flash_attention_2.*CUDA device.*'sdpa'"),
        (dict(attn_implementation="flex_attention"), "'flex_attention' is not implemented; use 'sdpa'"),
    ],
)
def test_bad_loading_options_are_one_line_errors(checkpoints, kwargs, message):
    with pytest.raises(CheckpointError, match=message) as caught:
        QwenVL.from_pretrained(checkpoints["qwen2_vl"], **kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(trust_remote_code=True), "trust_remote_code: not needed"),
        (dict(revision="main"), "revision: a Hub id is downloaded at its latest revision.*hf download"),
        (dict(quantization_config={}), "quantization_config: no quantized loading"),
        (dict(low_cpu_mem_usage=True), "low_cpu_mem_usage: always the case"),
        (dict(device_mapp="cpu"), "did you mean device_map"),
        (dict(trust_remote_code=True, revision="main"), "revision: .*; nor trust_remote_code: "),
    ],
)
def test_other_transformers_keywords_say_what_to_do(checkpoints, kwargs, message):
    with pytest.raises(UnsupportedKeyword, match=message) as caught:
        QwenVL.from_pretrained(checkpoints["qwen2_vl"], **kwargs)
    assert "\n" not in str(caught.value) and "unexpected keyword" not in str(caught.value)
