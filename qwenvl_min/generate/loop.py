"""Autoregressive generation: one prefill over the prompt, then cached token-by-token decoding.

Shapes (letters as in docs/design.md, "Shape legend"): B, T (the prompt, left padded), n, V, E.

Positions (docs/design.md, "3-D positions"): the prefill derives 3-D positions from the prompt with `get_rope_index`,
which also returns each row's delta; the n-th new token of row b then takes
(valid prompt length of b) + n + delta[b] on all three axes (`positions.generation_positions`). The deltas
live in this function's locals, never on the module, so one model can serve interleaved calls.

Batches are left padded (attention_mask 0 on the left). A row that emits a stop token keeps decoding in
lockstep with the others, but from then on it receives `pad_token_id` and those slots are masked out, so a
stopped row never influences anything. Decoding ends when every row has stopped or after
`max_new_tokens` steps.

Sampling: temperature 0 is greedy (argmax, first index on ties, as transformers). Otherwise logits / T,
then optional top-k, then optional top-p (nucleus: the smallest set of most likely tokens whose probability
reaches top_p), then one draw from a `torch.Generator` seeded with `seed` (the global RNG when seed is None).

Reading internals while generating: `generate` and `stream` run ordinary forwards of the model, so taps
opened around them fire on every call; `keep="all"` keeps each call's values apart (call 0 the prefill,
call k the decode step whose logits pick new token k; see `qwenvl_min.interp.taps`):

    with model.taps(read=["text.layers.3.attn.probs"], keep="all") as taps:
        new = generate(model, **batch, max_new_tokens=8)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..model.cache import KVCache
from ..model.positions import generation_positions
from ..model.qwenvl import QwenVL
from ..model.vision_inputs import VisionInputs, one_vision_value
from ..utils.validate import check_finite, check_sampling, finite_number
from .compiled import check_compilable, compiled_text, resolve_mode
from .settings import GenerationSettings, model_defaults


def stream(
    model: QwenVL,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    pixel_values: Tensor | None = None,
    image_grid_thw: Tensor | None = None,
    pixel_values_videos: Tensor | None = None,
    video_grid_thw: Tensor | None = None,
    second_per_grid_ts: Tensor | list[float] | None = None,
    mm_token_type_ids: Tensor | None = None,
    vision: VisionInputs | None = None,
    settings: GenerationSettings | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
    repetition_penalty: float | None = None,
    compile: bool | str = False,
) -> Iterator[Tensor]:
    """Yield the new tokens of every row, one (B,) int64 tensor per step. Arguments as in `generate`."""
    vision = one_vision_value(
        vision, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts
    )
    settings = (settings or model_defaults(model)).with_overrides(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_token_ids=stop_token_ids,
        pad_token_id=pad_token_id,
        repetition_penalty=repetition_penalty,
    )
    return _steps(model, input_ids, attention_mask, vision, mm_token_type_ids, settings, compile)


def generate(
    model: QwenVL,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    pixel_values: Tensor | None = None,
    image_grid_thw: Tensor | None = None,
    pixel_values_videos: Tensor | None = None,
    video_grid_thw: Tensor | None = None,
    second_per_grid_ts: Tensor | list[float] | None = None,
    mm_token_type_ids: Tensor | None = None,
    vision: VisionInputs | None = None,
    settings: GenerationSettings | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
    repetition_penalty: float | None = None,
    on_token: Callable[[Tensor], None] | None = None,
    compile: bool | str = False,
) -> Tensor:
    """Generate up to `max_new_tokens` tokens after each prompt row; returns the new ids (B, n), n <= max.

    input_ids (B, T) and attention_mask (B, T) as for the model, left padded; the vision inputs and
    mm_token_type_ids as for the model (encoded / checked once, in the prefill), so a processor's output
    can be passed whole: `generate(model, **batch, max_new_tokens=...)`. The vision inputs may come as one
    `VisionInputs` (`vision=`) instead of the five keywords. The stop token is part of a row's output and
    later slots of that row hold `pad_token_id`.

    Settings: `settings` (a `GenerationSettings`; default: the model's, i.e. its checkpoint's
    generation_config.json when it came from `from_pretrained`, else greedy, stop at the config's eos, pad
    with its bos) with every keyword given here put in. temperature=0 is greedy, top_p=1.0 and
    top_k=vocab_size switch those filters off, repetition_penalty=1.0 none. `repetition_penalty` p divides
    positive (multiplies negative) logits of every id already in the row, prompt included, before
    sampling, as transformers does. max_new_tokens must be set here or in `settings`. `on_token`
    receives each step's (B,) tokens as they are produced (`stream` is the iterator form of the same loop).

    `compile` runs the decoder compiled (`qwenvl_min.generate.compiled`): True picks CUDA graphs
    ("reduce-overhead") on CUDA and inductor's default on CPU, a string is a torch.compile mode. The
    first call per model pays the compilation (seconds); greedy tokens equal the eager ones. Not with
    taps or forward hooks of your own active (refused).
    """
    vision = one_vision_value(
        vision, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts
    )
    settings = (settings or model_defaults(model)).with_overrides(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_token_ids=stop_token_ids,
        pad_token_id=pad_token_id,
        repetition_penalty=repetition_penalty,
    )
    steps = []
    for tokens in _steps(model, input_ids, attention_mask, vision, mm_token_type_ids, settings, compile):
        if on_token is not None:
            on_token(tokens)
        steps.append(tokens)
    return torch.stack(steps, dim=1)


# ---- the loop -------------------------------------------------------------------------------------------


# decode(tokens (B,), positions (3, B, 1), step) -> logits (B, V)
Decode = Callable[[Tensor, Tensor, int], Tensor]


def _steps(
    model: QwenVL,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    vision: VisionInputs,
    mm_token_type_ids: Tensor | None,
    settings: GenerationSettings,
    compile: bool | str,
) -> Iterator[Tensor]:
    """The decoding loop over checked, resolved inputs (see the module docstring)."""
    cfg = model.config
    # None: the config's eos; an empty tuple: never stop early (every row runs max_new_tokens)
    stops = (cfg.eos_token_id,) if settings.stop_token_ids is None else settings.stop_token_ids
    pad = cfg.bos_token_id if settings.pad_token_id is None else settings.pad_token_id  # Qwen: <|endoftext|>
    penalty = settings.repetition_penalty
    _check_request(model, input_ids, attention_mask, settings)
    if penalty is not None:
        finite_number("repetition_penalty", penalty, positive=True, hint="1 is no penalty")
    device = model.text.embed_tokens.weight.device
    mode = resolve_mode(compile, device)
    if mode is not None:
        check_compilable(model)
    max_new_tokens = settings.max_new_tokens
    batch, length = input_ids.shape
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)

    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(settings.seed)
    stop_ids = torch.tensor(stops, dtype=torch.int64, device=device)
    # every id of each row so far (prompt, padding included, then new tokens): what the penalty divides
    seen = torch.cat([input_ids, input_ids.new_zeros(batch, max_new_tokens)], 1) if penalty else None

    def pick(logits: Tensor) -> Tensor:
        return _pick(logits, settings.temperature, settings.top_k, settings.top_p, generator)

    with torch.inference_mode():
        start = _start_eager if mode is None else _start_compiled
        logits, deltas, key_valid, decode = start(
            model, mode, input_ids, attention_mask, vision, mm_token_type_ids, max_new_tokens
        )
        valid = (
            torch.full((batch,), length, device=device) if attention_mask is None else attention_mask.sum(1)
        )
        # All decode positions at once (3, B, n): no per-step position arithmetic.
        positions = generation_positions(deltas, valid, 0, max_new_tokens)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        logits = logits if seen is None else _penalize(logits, seen[:, :length], penalty)
        next_tokens = pick(logits)

    for step in range(max_new_tokens):
        with torch.inference_mode():
            tokens = torch.where(finished, pad, next_tokens)
            key_valid[:, length + step] = ~finished  # a stopped row's later slots stay masked
            finished |= torch.isin(tokens, stop_ids)
            if seen is not None:
                seen[:, length + step] = tokens
        yield tokens
        # One host sync per step: it decides whether to stop (and the caller usually reads the tokens anyway).
        if step + 1 == max_new_tokens or bool(finished.all()):
            return
        with torch.inference_mode():
            logits = decode(tokens, positions[:, :, step : step + 1], step)
            if seen is not None:
                logits = _penalize(logits, seen[:, : length + step + 1], penalty)
            next_tokens = pick(logits)


def _start_eager(
    model: QwenVL,
    mode: None,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    vision: VisionInputs,
    mm_token_type_ids: Tensor | None,
    max_new_tokens: int,
) -> tuple[Tensor, Tensor, Tensor, Decode]:
    """Eager prefill into a `KVCache` appended to in place. Returns the last logits (B, V), the rope deltas
    (B, 1), the key mask (B, T + n) over prompt + new tokens that the loop fills in, and the decode step."""
    batch, length = input_ids.shape
    # preallocated: decode steps write in place instead of concatenating the history
    cache = KVCache(model.config.text.num_layers, capacity=length + max_new_tokens)
    out = model(
        input_ids,
        attention_mask=attention_mask,
        vision=vision,
        mm_token_type_ids=mm_token_type_ids,
        cache=cache,
        logits_to_keep=1,
    )
    # Only needed when some slot can be masked (left padding or a row that stopped); sliced per step.
    key_valid = torch.ones(batch, length + max_new_tokens, dtype=torch.bool, device=input_ids.device)
    if attention_mask is not None:
        key_valid[:, :length] = attention_mask.bool()
    padded = attention_mask is not None and not bool(attention_mask.all())

    def decode(tokens: Tensor, positions: Tensor, step: int) -> Tensor:
        # a single unpadded row attends to everything it has seen: no mask to build
        mask = None if batch == 1 and not padded else key_valid[:, : length + step + 1]
        step_out = model(tokens[:, None], attention_mask=mask, cache=cache, positions=positions)
        return step_out.logits[:, -1]

    return out.logits[:, -1], out.rope_deltas, key_valid, decode


def _start_compiled(
    model: QwenVL,
    mode: str,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    vision: VisionInputs,
    mm_token_type_ids: Tensor | None,
    max_new_tokens: int,
) -> tuple[Tensor, Tensor, Tensor, Decode]:
    """`_start_eager` with the compiled prefill and step writing a preallocated `KVCache` at slots
    (`qwenvl_min.generate.compiled`); the key mask returned is the cache's own (B, C), C >= T + n."""
    batch, length = input_ids.shape
    prepared = model.prepare(
        input_ids, vision, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids
    )
    text = compiled_text(model, mode)
    cache = text.cache_for(model, batch, length + max_new_tokens, prepared.embeds)
    if attention_mask is not None:
        cache.key_valid[:, :length] = attention_mask.bool()
    logits = text.prefill(model, prepared.embeds, prepared.positions, cache, prepared.deepstack)
    slots = torch.arange(length, length + max_new_tokens, device=input_ids.device)  # of the new tokens

    def decode(tokens: Tensor, positions: Tensor, step: int) -> Tensor:
        return text.step(model, tokens, positions, slots[step : step + 1], cache)

    return logits, prepared.rope_deltas, cache.key_valid, decode


def _penalize(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """transformers' repetition penalty: logits (B, V) of the ids in `seen` (B, K) divided by `penalty` where
    positive, multiplied where negative."""
    scores = logits.float()
    picked = scores.gather(1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, seen, picked)


def _pick(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Next token of every row from last-position logits (B, V) -> (B,) int64."""
    # NaN logits would make argmax return token 0 every step, an answer that looks normal
    check_finite("logits", logits, "NaN/inf weights or inputs: check the checkpoint with verify=True")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (B, 1) smallest kept score
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_request(
    model: QwenVL, input_ids: Tensor, attention_mask: Tensor | None, settings: GenerationSettings
) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError("input_ids must be an integer tensor of shape (batch, tokens)")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: input_ids has no tokens")
    max_new_tokens = settings.max_new_tokens
    if max_new_tokens is None:
        raise ValueError("max_new_tokens is not set: pass max_new_tokens=N (or a GenerationSettings with it)")
    check_sampling(max_new_tokens, settings.temperature, settings.top_k, settings.top_p, settings.seed)
    context = model.config.text.max_position_embeddings
    if input_ids.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"the prompt ({input_ids.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of {context} tokens; shorten the prompt, use fewer vision tokens (lower "
            "max_pixels or fewer frames) or ask for fewer new tokens"
        )
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        mask = attention_mask.bool()
        # left padding <=> once a row turns valid it stays valid: the mask is non-decreasing along T
        if (mask[:, :-1] & ~mask[:, 1:]).any():
            raise ValueError("attention_mask has padding after valid tokens; generation needs left padding")
        if not mask[:, -1].all():
            raise ValueError("a prompt row has no valid tokens (attention_mask all 0)")
