"""`qwenvl-min latents`: chosen taps for many inputs, one .safetensors file per input.

Resumable (existing outputs are skipped), atomic (temporary file + rename: nothing half-written is left),
and a bad input is reported and skipped; the run ends with a summary and exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from .cli_support import CliError, is_video, load_model, preprocess, vision_prompt
from .taps import SegmentMaps, Taps


def _tap_tensors(name: str, value: object) -> dict[str, Tensor]:
    """A tap value as named tensors: vision attention maps are stored per segment-length group."""
    if isinstance(value, SegmentMaps):
        out = {}
        for g, (probs, index) in enumerate(zip(value.probs, value.token_index)):
            out[f"{name}.group{g}.probs"] = probs
            out[f"{name}.group{g}.token_index"] = index
        return out
    assert isinstance(value, Tensor), f"tap {name} gave {type(value).__name__}"
    return {name: value}


def _write_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same directory, then rename: a file at `path` is always complete."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}, str(tmp), metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_latents(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    names = [n.strip() for n in args.taps.split(",") if n.strip()]
    if not names:
        raise CliError("--taps is empty; name at least one tap, e.g. vision.pre_merge,text.layers.0")
    inputs = [Path(p) for p in args.inputs]
    stems = Counter(p.stem for p in inputs)
    if clash := sorted(s for s, n in stems.items() if n > 1):
        raise CliError(
            f"several inputs share the output name(s) {clash}; outputs are named after the input stem"
        )
    model = load_model(args.model, args.dtype, args.device, args.verify)
    try:
        Taps(model.config, read=names)  # check the names before any work
    except KeyError as err:
        raise CliError(err.args[0]) from err
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = model.text.embed_tokens.weight.device
    written, skipped, failed = 0, 0, []
    bar = tqdm(inputs, unit="input", disable=args.no_progress, file=sys.stderr)
    for path in bar:
        target = out / f"{path.stem}.safetensors"
        if target.exists():
            skipped += 1
            continue
        try:
            vision = preprocess(path, args.min_pixels, args.max_pixels)
            if model.config.model_type == "qwen2_vl":
                vision.pop("second_per_grid_ts", None)
            taps = model.taps(read=names)
            ids = vision_prompt(model.config, vision).to(device)
            with torch.inference_mode():
                model.run(ids, **{k: t.to(device) for k, t in vision.items()}, taps=taps)
            tensors: dict[str, Tensor] = {}
            for name in names:
                tensors |= _tap_tensors(name, taps.cache[name])
            grid = vision.get("image_grid_thw", vision.get("video_grid_thw"))
            metadata = {
                "source": str(path.resolve()),
                "kind": "video" if is_video(path) else "image",
                "grid_thw": json.dumps(grid[0].tolist()),
                "taps": json.dumps(names),
                "model": str(Path(args.model).resolve()),
                "model_type": model.config.model_type,
                "input_ids": json.dumps(ids[0].tolist()),
            }
            _write_atomic(target, tensors, metadata)
            written += 1
        except (OSError, ValueError, ImportError) as err:
            failed.append((path, f"{type(err).__name__}: {err}"))
            tqdm.write(f"failed: {path}: {err}", file=sys.stderr)
    bar.close()
    print(f"latents: {written} written, {skipped} skipped (already in {out}), {len(failed)} failed")
    for path, why in failed:
        print(f"  failed {path}: {why}")
    return 1 if failed else 0
