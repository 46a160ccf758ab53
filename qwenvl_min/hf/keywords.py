"""transformers keywords that qwenvl-min does not take: one line each saying why and what to use instead.

Python's own answer to such a keyword is "got an unexpected keyword argument", which tells a user coming
from transformers neither whether the feature exists here nor what to call instead. The transformers-style
entry points of `QwenVL` catch the names their signatures do not take (`QwenVL.__call__` for `forward`,
a final `**unsupported` on `generate`, `from_pretrained`, `get_image_features` and `get_video_features`)
and hand them to `refuse`, which raises `UnsupportedKeyword` naming every one of them: the reason from
the tables below for transformers' own keywords, a close spelling (or the list of keywords) for any other
name. Nothing caught is ever passed on.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection

_NO_BEAMS = "there is no beam search here; decode greedily (do_sample=False) or sample (do_sample=True)"
_NOT_A_FILTER = (
    "not implemented: generation is greedy or samples with temperature, top_k, top_p and "
    "repetition_penalty; for other rules drive qwenvl_min.generate.stream's loop yourself"
)
_NO_ASSISTANT = "there is no assisted or speculative decoding here"
_OUR_CACHE = (
    "decoding always uses qwenvl_min's KV cache; the preallocated, compiled one is "
    "qwenvl_min.generate.generate(model, ..., compile=True)"
)
_DURING_GENERATION = (
    "model.generate returns the ids only; read any tensor of every step with "
    "`with model.taps(read=[...], keep='all')` around it: call 0 is the prefill, call k the step of token k"
)
_ENCODER_ONLY = "a setting for encoder-decoder models; these are decoder-only"
_DOWNLOAD_FIRST = (
    "a Hub id is downloaded at its latest revision; for anything else run "
    "`hf download ID --revision R --local-dir DIR` and pass DIR"
)
_NO_SPLITTING = (
    "the whole model sits on one device here; to spread it over GPUs use tensor parallelism, "
    "qwenvl_min.parallel.parallelize, see docs/distributed.md"
)
_NO_QUANTIZATION = "no quantized loading here: dtype= float32, bfloat16 or float16"
_OUR_KERNELS = (
    "the kernels are ours: attn_implementation='flash_attention_2' runs them on CUDA (docs/kernels.md)"
)
_PRECOMPUTED_VISION = (
    "the vision layout is computed inside; to compute it once yourself call "
    "model.visual(pixel_values, grid_thw, layout=model.visual.layout(pixel_values, grid_thw))"
)
_PACKED = "packed sequences are not supported: pad the batch and pass attention_mask"
_TRAINING_LOSS = (
    "the loss is the mean over the counted labels of this batch; scale it yourself for accumulation"
)
_NO_EXPERTS = (
    "router logits are taps here: read model.taps(read=['text.layers.{i}.mlp.router']) on a Qwen3-VL-MoE "
    "model, (B, T, experts) per sparse layer (the auxiliary load-balancing loss is not implemented; the "
    "other families have no experts)"
)

FORWARD = {
    "past_key_values": "pass cache=, a qwenvl_min KVCache; use_cache=True starts one and returns it in .cache",
    "position_ids": "pass positions=, the (3, batch, tokens) M-RoPE positions; without a cache they are "
    "derived from input_ids and the grids",
    "inputs_embeds": "forward takes input_ids and inserts the vision features itself; to run the decoder on "
    "embeddings of your own call model.lm_head(model.text(embeds, positions))",
    "cache_position": "not needed: the cache knows its length and positions= gives the rotary positions",
    "rope_deltas": "pass positions= instead; ForwardOutput.rope_deltas holds the deltas of a prompt",
    "mm_encoder_outputs": "pass pixel_values / pixel_values_videos; to change the vision features, replace "
    "'visual.merger' with model.taps(replace=...)",
    "num_logits_to_keep": "pass logits_to_keep=",
    "num_items_in_batch": _TRAINING_LOSS,
    "is_causal": "the decoder is always causal",
    "seq_idx": _PACKED,
    "cu_seq_lens_q": _PACKED,
    "cu_seq_lens_k": _PACKED,
    "max_length_q": _PACKED,
    "max_length_k": _PACKED,
    "image_cu_seqlens": _PRECOMPUTED_VISION,
    "video_cu_seqlens": _PRECOMPUTED_VISION,
    "image_position_ids": _PRECOMPUTED_VISION,
    "video_position_ids": _PRECOMPUTED_VISION,
    "output_router_logits": _NO_EXPERTS,
}

_DERIVED_POSITIONS = "positions are derived from input_ids and the grids"
_LAST_LOGITS = "generation computes the last position's logits only already"

# the forward's entries apply to generate too (transformers passes unknown generate keywords to forward)
GENERATE = {
    **FORWARD,
    "inputs": "pass input_ids: model.generate(**batch, ...) or model.generate(input_ids, ...)",
    "num_beams": _NO_BEAMS,
    "num_beam_groups": _NO_BEAMS,
    "early_stopping": _NO_BEAMS,
    "length_penalty": _NO_BEAMS,
    "diversity_penalty": _NO_BEAMS,
    "constraints": _NO_BEAMS,
    "force_words_ids": _NO_BEAMS,
    "num_return_sequences": "one sequence per prompt row: call generate again, or repeat the rows",
    "min_new_tokens": _NOT_A_FILTER,
    "min_length": _NOT_A_FILTER,
    "no_repeat_ngram_size": _NOT_A_FILTER,
    "bad_words_ids": _NOT_A_FILTER,
    "suppress_tokens": _NOT_A_FILTER,
    "begin_suppress_tokens": _NOT_A_FILTER,
    "sequence_bias": _NOT_A_FILTER,
    "forced_bos_token_id": _NOT_A_FILTER,
    "forced_eos_token_id": _NOT_A_FILTER,
    "typical_p": _NOT_A_FILTER,
    "min_p": _NOT_A_FILTER,
    "top_h": _NOT_A_FILTER,
    "epsilon_cutoff": _NOT_A_FILTER,
    "eta_cutoff": _NOT_A_FILTER,
    "penalty_alpha": _NOT_A_FILTER,
    "dola_layers": _NOT_A_FILTER,
    "guidance_scale": _NOT_A_FILTER,
    "negative_prompt_ids": _NOT_A_FILTER,
    "negative_prompt_attention_mask": _NOT_A_FILTER,
    "renormalize_logits": _NOT_A_FILTER,
    "exponential_decay_length_penalty": _NOT_A_FILTER,
    "logits_processor": _NOT_A_FILTER,
    "prefix_allowed_tokens_fn": _NOT_A_FILTER,
    "token_healing": _NOT_A_FILTER,
    "watermarking_config": _NOT_A_FILTER,
    "low_memory": _NOT_A_FILTER,
    "remove_invalid_values": "NaN or inf logits stop generation with an error here, never a silent fix",
    "encoder_no_repeat_ngram_size": _ENCODER_ONLY,
    "encoder_repetition_penalty": _ENCODER_ONLY,
    "stopping_criteria": "stop with eos_token_id, one id or a list; qwenvl_min.generate.stream yields each "
    "step's tokens for stopping rules of your own",
    "stop_strings": "stop with eos_token_id, the ids of the stop strings' tokens",
    "max_time": "bound the length with max_new_tokens, or stop iterating qwenvl_min.generate.stream",
    "streamer": "iterate qwenvl_min.generate.stream(model, **batch, max_new_tokens=...) or pass "
    "on_token= to qwenvl_min.generate.generate",
    "custom_generate": "the loop is qwenvl_min.generate.stream; write yours around model(...) calls",
    "synced_gpus": "a tensor-parallel model generates with qwenvl_min.generate.generate on every rank "
    "(docs/distributed.md)",
    "return_dict_in_generate": _DURING_GENERATION,
    "output_scores": _DURING_GENERATION,
    "output_logits": _DURING_GENERATION,
    "output_hidden_states": _DURING_GENERATION,
    "output_attentions": _DURING_GENERATION,
    "assistant_model": _NO_ASSISTANT,
    "prompt_lookup_num_tokens": _NO_ASSISTANT,
    "max_matching_ngram_size": _NO_ASSISTANT,
    "num_assistant_tokens": _NO_ASSISTANT,
    "num_assistant_tokens_schedule": _NO_ASSISTANT,
    "assistant_confidence_threshold": _NO_ASSISTANT,
    "assistant_lookbehind": _NO_ASSISTANT,
    "target_lookbehind": _NO_ASSISTANT,
    "assistant_early_exit": _NO_ASSISTANT,
    "assistant_ensemble_weight": _NO_ASSISTANT,
    "is_assistant": _NO_ASSISTANT,
    "speculation_type": _NO_ASSISTANT,
    "use_mtp": _NO_ASSISTANT,
    "cache_implementation": _OUR_CACHE,
    "cache_config": _OUR_CACHE,
    "max_cache_len": _OUR_CACHE,
    "compile_config": _OUR_CACHE,
    "disable_compile": _OUR_CACHE,
    "prefill_chunk_size": _OUR_CACHE,
    "continuous_batching_config": _OUR_CACHE,
    "past_key_values": "generate starts its own KV cache; continue a sequence by generating from the whole "
    "of it",
    "cache": "generate starts its own KV cache; continue a sequence by generating from the whole of it",
    "seed": "model.generate draws from torch's global RNG as transformers does, so call torch.manual_seed; "
    "qwenvl_min.generate.generate takes seed=",
    "tokenizer": "stop with eos_token_id: ids, not strings",
    "labels": "generation takes no labels; the loss is model(**batch, labels=...).loss",
    "logits_to_keep": _LAST_LOGITS,
    "num_logits_to_keep": _LAST_LOGITS,
    "position_ids": _DERIVED_POSITIONS,
    "rope_deltas": _DERIVED_POSITIONS,
    "cache_position": _DERIVED_POSITIONS,
}

FROM_PRETRAINED = {
    "trust_remote_code": "not needed, qwenvl-min runs its own code and never a checkpoint's",
    "revision": _DOWNLOAD_FIRST,
    "cache_dir": _DOWNLOAD_FIRST,
    "force_download": _DOWNLOAD_FIRST,
    "local_files_only": _DOWNLOAD_FIRST,
    "token": _DOWNLOAD_FIRST,
    "subfolder": _DOWNLOAD_FIRST,
    "proxies": _DOWNLOAD_FIRST,
    "low_cpu_mem_usage": "always the case: weights are memory-mapped, and cast or moved one tensor at a time",
    "disable_mmap": "the weights are always memory-mapped (private, copy-on-write); a cast or another device "
    "copies them one tensor at a time",
    "weights_only": "nothing is unpickled: only safetensors are read",
    "use_safetensors": "always safetensors: pickled weights are never loaded",
    "quantization_config": _NO_QUANTIZATION,
    "load_in_8bit": _NO_QUANTIZATION,
    "load_in_4bit": _NO_QUANTIZATION,
    "max_memory": _NO_SPLITTING,
    "offload_folder": _NO_SPLITTING,
    "offload_state_dict": _NO_SPLITTING,
    "offload_buffers": _NO_SPLITTING,
    "tp_plan": _NO_SPLITTING,
    "tp_size": _NO_SPLITTING,
    "device_mesh": _NO_SPLITTING,
    "distributed_config": _NO_SPLITTING,
    "use_kernels": _OUR_KERNELS,
    "kernel_config": _OUR_KERNELS,
    "allow_all_kernels": _OUR_KERNELS,
    "experts_implementation": _NO_EXPERTS,
    "fusion_config": _OUR_KERNELS,
    "config": "the config is the directory's config.json; to pair a config with weights of your own use "
    "QwenVL.from_hf(config, state_dict)",
    "state_dict": "use QwenVL.from_hf(config, state_dict)",
    "generation_config": "the defaults come from the directory's generation_config.json "
    "(model.generation_settings); pass generation_config= to model.generate",
    "variant": "load a directory that holds the variant's weights as its *.safetensors",
    "ignore_mismatched_sizes": "loading is strict: every key mapped, every shape checked against config.json",
    "output_loading_info": "loading is strict: a checkpoint with missing or unknown keys does not load, so "
    "there is nothing to report",
    "key_mapping": "the key table is KEY_TABLE in weights_convert/mapping.py",
    "gguf_file": "only safetensors checkpoints are read",
    "adapter_name": "no adapters (PEFT) here: merge the adapter into the weights first",
    "adapter_kwargs": "no adapters (PEFT) here: merge the adapter into the weights first",
    "tqdm_class": "loading is memory-mapped and prints no progress",
}

VISION_FEATURES = {
    "output_attentions": "transformers returns each block's attention output here, not maps; read the "
    "probabilities with model.taps(read=['visual.blocks.3.attn.probs'])",
    "cu_seqlens": _PRECOMPUTED_VISION,
    "max_seqlen": _PRECOMPUTED_VISION,
    "position_ids": _PRECOMPUTED_VISION,
    "window_index": _PRECOMPUTED_VISION,
    "cu_window_seqlens": _PRECOMPUTED_VISION,
    "max_window_seqlen": _PRECOMPUTED_VISION,
    "num_items_in_batch": _TRAINING_LOSS,
    "output_router_logits": _NO_EXPERTS,
    "is_causal": "vision attention is bidirectional within each frame or window",
    "seq_idx": _PACKED,
    "cu_seq_lens_q": _PRECOMPUTED_VISION,
    "cu_seq_lens_k": _PRECOMPUTED_VISION,
    "max_length_q": _PRECOMPUTED_VISION,
    "max_length_k": _PRECOMPUTED_VISION,
}

# call -> (the name users see, transformers' keywords it refuses)
_CALLS = {
    "forward": ("QwenVL.forward", FORWARD),
    "generate": ("QwenVL.generate", GENERATE),
    "from_pretrained": ("QwenVL.from_pretrained", FROM_PRETRAINED),
    "get_image_features": ("QwenVL.get_image_features", VISION_FEATURES),
    "get_video_features": ("QwenVL.get_video_features", VISION_FEATURES),
}


class UnsupportedKeyword(TypeError):
    """A keyword an entry point does not take (a TypeError, as Python's own is)."""


def refuse(call: str, names: Collection[str], accepted: Collection[str]) -> None:
    """Raise `UnsupportedKeyword` naming every one of `names` given to `call` (a key of `_CALLS`), with
    what to do instead; return when `names` is empty. `accepted`: the keywords the call takes."""
    if not names:
        return
    shown, table = _CALLS[call]
    reasons = [f"{name}: {_instead(name, table, accepted)}" for name in sorted(names)]
    raise UnsupportedKeyword(f"{shown} does not take " + "; nor ".join(reasons))


def _instead(name: str, table: dict[str, str], accepted: Collection[str]) -> str:
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(accepted), n=1)
    if close:
        return f"did you mean {close[0]}?"
    return f"its keywords are {', '.join(sorted(accepted))}"
