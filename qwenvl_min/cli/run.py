"""`qwenvl-min run --model DIR|HUB_ID --image F --prompt TEXT`: a streamed answer (tensor parallel under
torchrun with --tp N, compiled decoding with --compile).

The answer is the result (stdout, streamed); what the run cost is status on stderr (`qwenvl_min.utils.console`):
the prompt's token count and how many of them are vision tokens, the time to the first token (the prefill,
vision tower included), the new tokens and their rate, and why generation stopped. `--json` prints the
answer and the same numbers as one JSON object instead of streaming (schema in docs/cli.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from ..generate.compiled import COMPILE_MODES, DEBUG_BACKENDS, resolve_mode
from ..generate.settings import model_defaults
from ..generate.text_stream import TextStream
from ..inputs.preprocess import concat_outputs
from ..inputs.settings_inputs import image_inputs
from ..parallel.launch import launched_distributed
from ..utils import console
from ..utils.validate import check_sampling
from .options import FEWER_TOKENS, add_model, add_pixel_budget
from .support import CliError, VideoFlags, check_input_file, load_model, prepared_video


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="answer a prompt about images / videos, streamed")
    add_model(run)
    run.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    run.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    run.add_argument("--prompt", required=True, help="the question (not empty)")
    run.add_argument(
        "--tokenizer", default=None, help="tokenizer.json or a directory with it (default: --model)"
    )
    run.add_argument("--max-new-tokens", type=int, default=256)
    run.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy (default: the checkpoint's generation_config.json decides; greedy when it has none)",
    )
    run.add_argument("--top-k", type=int, default=None, help="default: the checkpoint's, else none")
    run.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's, else none")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        choices=[*COMPILE_MODES, *DEBUG_BACKENDS],  # bare --compile gives True (not checked here)
        metavar="MODE",
        help="compiled decoder: CUDA graphs on CUDA, inductor on CPU; MODE picks a torch.compile mode "
        f"({', '.join(COMPILE_MODES)}) or a debug backend ({', '.join(DEBUG_BACKENDS)}); the first "
        "answer pays the compilation (docs/compiled_generation.md)",
    )
    run.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel degree; > 1 under torchrun with that many processes (default 1)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print the answer and its numbers (tokens, time to first token, tokens/s, why it stopped) as one "
        "JSON object instead of streaming it",
    )
    add_pixel_budget(run)
    run.set_defaults(func=cmd_run)


@dataclass(frozen=True)
class RunStats:
    """What one answer cost; printed as a status line and in `--json` (docs/cli.md)."""

    prompt_tokens: int  # the whole prompt, vision tokens included
    vision_tokens: int  # image and video pad tokens: what the vision tower's merged features fill
    new_tokens: int  # answer tokens, the stop token not counted
    time_to_first_token_s: float  # from the start of generation: the prefill, vision tower included
    tokens_per_s: float | None  # tokens after the first per second of decoding (None: fewer than two)
    stopped: str  # "stop_token" or "max_new_tokens"
    stop_token: str | None  # the stop token's text when stopped by one

    def line(self) -> str:
        rate = "" if self.tokens_per_s is None else f", {self.tokens_per_s:.1f} tokens/s"
        why = f"stop token {self.stop_token}" if self.stopped == "stop_token" else "reached --max-new-tokens"
        return (
            f"prompt {self.prompt_tokens} tokens ({self.vision_tokens} vision) | first token after "
            f"{self.time_to_first_token_s:.2f} s | {self.new_tokens} new tokens{rate} | stopped: {why}"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from ..generate.loop import stream
    from ..inputs.processor import Processor
    from ..inputs.prompts import encode, load_tokenizer

    if not args.prompt.strip():
        raise CliError('--prompt is empty; give the question, e.g. --prompt "Describe this image."')
    # the ranges now, before loading; None (the checkpoint's default) is checked by generate with the rest
    sampling = 1.0 if args.temperature is None else args.temperature
    check_sampling(args.max_new_tokens, sampling, args.top_k, args.top_p, args.seed)
    for path in args.image:
        check_input_file(path, "an image")
    for path in args.video:
        check_input_file(path, "a video")
    show = True  # only rank 0 of a tensor-parallel run prints the answer
    if args.tp > 1 or launched_distributed():
        from .distributed import load_tp_model

        model, context = load_tp_model(
            args.model, args.dtype, args.device, args.verify, args.tp, finite_guard=not args.compile
        )
        show = context.is_main
    else:
        # compiled decoding refuses forward hooks; generate checks every step's logits anyway
        model = load_model(args.model, args.dtype, args.device, args.verify, finite_guard=not args.compile)
    config = model.config
    directory = model.checkpoint_dir
    try:  # the checkpoint's tokenizer, processor settings and chat template
        processor = Processor.from_pretrained(directory)
        if args.tokenizer:
            processor.tokenizer = load_tokenizer(args.tokenizer)
    except FileNotFoundError as err:
        raise CliError(
            f"{err}. HF checkpoints ship tokenizer.json and the converter copies it; copy it into the model "
            "directory or pass --tokenizer PATH"
        ) from err
    budget = (args.min_pixels, args.max_pixels, args.max_vision_tokens)
    images = [image_inputs(p, *budget, processor.image) for p in args.image]
    flags = VideoFlags.from_args(args)
    prepared = [prepared_video(p, *budget, processor.video, flags) for p in args.video]
    videos = [video.model_inputs(processor.family) for video in prepared]
    # Qwen3-VL: each frame's timestamp goes into the prompt as text
    timestamps = [s for v in prepared for s in v.video_timestamps()] if processor.family == "qwen3" else None
    vision: dict[str, Tensor] = {}
    if images:
        vision |= concat_outputs(images)
    if videos:
        vision |= concat_outputs(videos)  # Qwen2-VL checks second_per_grid_ts and does not use it
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    content.append({"type": "text", "text": args.prompt})
    text = processor.apply_chat_template([{"role": "user", "content": content}])
    tokenizer = processor.tokenizer
    try:
        encoded = encode(
            tokenizer,
            text,
            image_grid_thw=vision.get("image_grid_thw"),
            video_grid_thw=vision.get("video_grid_thw"),
            merge_size=config.vision.merge_size,
            max_length=config.text.max_position_embeddings,
            video_timestamps=timestamps if videos else None,
        )
    except ValueError as err:
        if "tokens long, over the limit" not in str(err):
            raise
        raise CliError(f"{str(err).split(';')[0]}; {FEWER_TOKENS}, or shorten --prompt") from err
    stops = model_defaults(model).stop_token_ids  # the checkpoint's eos ids when it says
    if stops is None:
        stops = [
            i
            for i in (tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>"))
            if i is not None
        ]
    device = model.text.embed_tokens.weight.device
    vision = {k: t.to(device) for k, t in vision.items()}
    if args.compile and show:
        mode = resolve_mode(args.compile, device)
        console.status(
            "compiling the decoder (torch.compile, mode %s): the first answer waits for it, 20 s to minutes "
            "(docs/compiled_generation.md)",
            mode,
        )
    ids = encoded["input_ids"]
    pieces = TextStream(tokenizer)  # incremental: each token's new text, never the whole answer again
    stop_token: int | None = None
    stamps: list[float] = []
    started = time.perf_counter()
    for step in stream(
        model,
        ids,
        attention_mask=encoded["attention_mask"],
        **vision,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token_ids=list(stops) or None,
        compile=args.compile,
    ):
        stamps.append(time.perf_counter())
        token = int(step[0])
        if token in stops:
            stop_token = token
            break
        piece = pieces.push(token)
        if show and piece and not args.json:
            console.result(piece, end="")
    rest = pieces.finish()
    if not show:
        return 0
    stats = _stats(ids, config, stamps, started, pieces, stop_token, tokenizer)
    if args.json:
        console.result_json({"answer": pieces.text, **asdict(stats)})
    else:
        console.result(rest)
    console.status("%s", stats.line())
    return 0


def _stats(
    ids: Tensor,
    config: Any,
    stamps: list[float],
    started: float,
    pieces: TextStream,
    stop_token: int | None,
    tokenizer: Any,
) -> RunStats:
    vision = int(((ids == config.image_token_id) | (ids == config.video_token_id)).sum())
    new = len(pieces.ids)
    decode_s = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return RunStats(
        prompt_tokens=int(ids.shape[1]),
        vision_tokens=vision,
        new_tokens=new,
        time_to_first_token_s=round(stamps[0] - started, 4),
        # each stamp after the first is one decode step (the stop token's too)
        tokens_per_s=round((len(stamps) - 1) / decode_s, 2) if decode_s > 0 else None,
        stopped="max_new_tokens" if stop_token is None else "stop_token",
        stop_token=None if stop_token is None else tokenizer.id_to_token(stop_token),
    )
