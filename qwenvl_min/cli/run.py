"""`qwenvl-min run --model DIR|HUB_ID --image F --prompt TEXT`: a streamed answer (tensor parallel under
torchrun with --tp N, compiled decoding with --compile)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import Tensor

from ..generate.compiled import COMPILE_MODES, DEBUG_BACKENDS
from ..generate.settings import model_defaults
from ..generate.text_stream import TextStream
from ..inputs.preprocess import concat_outputs
from ..parallel.launch import launched_distributed
from ..utils.validate import check_sampling
from .options import FEWER_TOKENS, add_model, add_pixel_budget
from .support import CliError, VideoFlags, image_inputs, load_model, prepared_video


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="answer a prompt about images / videos, streamed")
    add_model(run)
    run.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    run.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    run.add_argument("--prompt", default="", help="the question")
    run.add_argument(
        "--tokenizer", default=None, help="tokenizer.json or a directory with it (default: --model)"
    )
    run.add_argument("--max-new-tokens", type=int, default=256)
    run.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy (default: the checkpoint's generation_config.json, else greedy)",
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
    add_pixel_budget(run)
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from ..generate.loop import stream
    from ..inputs.processor import Processor
    from ..inputs.prompts import encode, load_tokenizer

    if not args.image and not args.video and not args.prompt:
        raise CliError("nothing to answer: give --prompt and optionally --image / --video")
    # the ranges now, before loading; None (the checkpoint's default) is checked by generate with the rest
    sampling = 1.0 if args.temperature is None else args.temperature
    check_sampling(args.max_new_tokens, sampling, args.top_k, args.top_p, args.seed)
    for path in [*args.image, *args.video]:
        if not Path(path).is_file():
            raise CliError(f"input file not found: {path}")
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
    content.append({"type": "text", "text": args.prompt or ""})
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
    pieces = TextStream(tokenizer)  # incremental: each token's new text, never the whole answer again
    for step in stream(
        model,
        encoded["input_ids"],
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
        token = int(step[0])
        if token in stops:
            break
        piece = pieces.push(token)
        if show and piece:
            print(piece, end="", flush=True)
    if show:
        print(pieces.finish())
    return 0
