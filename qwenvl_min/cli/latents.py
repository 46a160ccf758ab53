"""`qwenvl-min latents`: chosen taps for many inputs, one .safetensors file per input.

- Resumable: an existing output is skipped only if it is a complete safetensors file made with the same
  settings (taps, model weights, dtype, pixel budget; recorded in its metadata). Anything else at that
  name is reported as a failure and left untouched: never mixed into the results, never deleted.
- Atomic: each file is written to a temporary name and renamed (permissions from the umask); a SIGTERM
  removes the temporary file, and temporary files a SIGKILL left are removed by the next run.
- Exclusive: a lock file in OUT stops a second run writing into the same directory.
- A bad input (unreadable, over the budget, a decompression bomb) is reported and skipped; a full disk
  or a read-only OUT stops the run with one error line. Exit status 1 if anything failed.
- Data parallel: launched by torchrun (`torchrun --nproc-per-node N -m qwenvl_min latents ...`), each
  rank loads the model on its device and takes every N-th input (`cli.distributed.share`); rank 0 holds
  the lock and prints one summary for all ranks. Outputs are those of a one-process run; a failed input
  on one rank does not stop the others, and a fatal error on one rank stops all of them at the end.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from ..interp.taps import SegmentMaps, TapError, Taps
from ..parallel.launch import init_distributed, launched_distributed
from ..utils.faults import pause_point
from ..utils.fs import ExclusiveLock, LockedError, write_atomic
from ..utils.progress import progress_bar
from ..weights_convert.safetensors_io import (
    DTYPE_NAMES,
    SafetensorsFormatError,
    read_header,
    write_safetensors,
)
from .distributed import all_gather_objects, share
from .options import add_model, add_pixel_budget
from .support import (
    CliError,
    VideoFlags,
    checkpoint_fingerprint,
    is_video,
    load_model,
    preprocess,
    vision_prompt,
)

log = logging.getLogger(__name__)
LOCK_NAME = ".latents.lock"
_FATAL_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _tap_tensors(name: str, value: object) -> dict[str, Tensor]:
    """A tap value as named tensors: vision attention maps are stored per segment-length group."""
    if isinstance(value, SegmentMaps):
        out = {}
        for g, (probs, index) in enumerate(zip(value.probs, value.token_index)):
            out[f"{name}.group{g}.probs"] = probs
            out[f"{name}.group{g}.token_index"] = index
        return out
    if not isinstance(value, Tensor):  # every module of the tree returns a tensor; a swapped-in one might not
        raise CliError(
            f"tap {name} gave a {type(value).__name__}, not a tensor; latents can only save tensors"
        )
    return {name: value}


def _write_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same directory, then rename: a file at `path` is always complete."""
    cpu = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    bad = sorted({str(t.dtype) for t in cpu.values() if t.dtype not in DTYPE_NAMES})
    if bad:
        raise ValueError(f"taps of dtype {bad} cannot be stored in safetensors")
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in cpu.items()]

    def write(tmp: Path) -> None:
        write_safetensors(tmp, entries, cpu.__getitem__, metadata)
        pause_point("latents.before_rename")

    write_atomic(path, write)


VIDEO_RULES = "qwen-vl-utils 0.0.14"


def _settings(args: argparse.Namespace, names: list[str], checkpoint_dir: Path) -> dict[str, object]:
    """What decides an output's content: resuming requires all of it to match."""
    return {
        "taps": names,
        "model_manifest_sha256": checkpoint_fingerprint(checkpoint_dir),
        "dtype": args.dtype or "stored",
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
        "fps": args.fps,
        "num_frames": args.num_frames,
        "max_frames": args.max_frames,
        "total_pixels": args.total_pixels,
    }


def _input_settings(settings: dict[str, object], path: Path) -> dict[str, object]:
    """A video's frames also depend on the sampling rules (qwen-vl-utils' since they became the default):
    outputs made before, with every frame kept, are not taken for finished ones."""
    return settings | {"video_rules": VIDEO_RULES} if is_video(path) else settings


def _existing(target: Path, settings: dict[str, object]) -> str | None:
    """None if `target` is a finished output of these settings, else why it cannot be reused."""
    try:
        header = read_header(target)
    except (SafetensorsFormatError, OSError) as err:
        return f"is not a complete latents file ({err})"
    try:
        recorded = json.loads(header.metadata.get("settings", "null"))
    except json.JSONDecodeError:
        recorded = None
    if not isinstance(recorded, dict):
        return "was not written by this version of `latents` (no settings in its metadata)"
    differ = sorted(k for k in settings if recorded.get(k) != settings[k])
    if differ:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} there, {settings[k]!r} now" for k in differ)
        return f"was made with other settings ({shown})"
    return None


def _clean_stale(out: Path) -> None:
    """Temporary files of killed runs (we hold the lock: no live run is writing them)."""
    for tmp in out.glob(".*.safetensors.*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)


def register(sub: argparse._SubParsersAction) -> None:
    latents = sub.add_parser("latents", help="save chosen taps for many inputs, one .safetensors each")
    add_model(latents)
    latents.add_argument(
        "--taps", required=True, help="comma-separated tap names, e.g. visual.merger.input,text.layers.3"
    )
    latents.add_argument("--out", required=True, help="output directory (existing outputs are skipped)")
    latents.add_argument("inputs", nargs="+", help="image / video files")
    latents.add_argument("--no-progress", action="store_true", help="no progress bar")
    latents.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_pixel_budget(latents)
    latents.set_defaults(func=cmd_latents)


def cmd_latents(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.taps.split(",") if n.strip()]
    if not names:
        raise CliError("--taps is empty; name at least one tap, e.g. visual.merger.input,text.layers.0")
    inputs = [Path(p) for p in args.inputs]
    stems = Counter(p.stem for p in inputs)
    if clash := sorted(s for s, n in stems.items() if n > 1):
        raise CliError(
            f"several inputs share the output name(s) {clash}; outputs are named after the input stem"
        )
    context = None
    device = args.device
    if launched_distributed():  # data parallel: each rank a whole model, its share of the inputs
        context = init_distributed(args.device)
        device = str(context.device)
    model = load_model(args.model, args.dtype, device, args.verify)
    try:
        Taps(model, read=names)  # check the names before any work
    except TapError as err:
        raise CliError(err.args[0]) from err
    out = Path(args.out)
    lock, problem = None, None
    if context is None or context.is_main:
        lock, problem = _lock(out)
    if context is not None:  # every rank stops if rank 0 could not take the lock
        problem = all_gather_objects(problem if context.is_main else None)[0]
    if problem:
        raise CliError(problem)
    try:
        if context is None:
            return _summarize(out, [_run(args, model, names, inputs, out)], args.json)
        dist.barrier()  # rank 0 has cleaned stale temporary files before anyone writes
        try:
            result = _run(args, model, names, share(inputs, context), out, progress=context.is_main)
        except CliError as err:  # stop together at the end instead of leaving the others waiting
            result = (0, 0, [], str(err))
        results = all_gather_objects(result)
        return _summarize(out, results, args.json) if context.is_main else _status(results)
    finally:
        if lock is not None:
            lock.release()


def _lock(out: Path) -> tuple[ExclusiveLock | None, str | None]:
    """Take OUT's lock and remove stale temporary files; (lock, None) or (None, why not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = ExclusiveLock(out / LOCK_NAME)
        lock.acquire()
    except LockedError as err:
        return None, (
            f"another `latents` run is writing into {out} ({err.strerror}); wait for it or choose another --out"
        )
    except OSError as err:
        return None, f"cannot write into {out}: {err.strerror or err}; choose another --out"
    _clean_stale(out)
    return lock, None


Result = tuple[int, int, list[tuple[Path, str]], str | None]  # written, skipped, failed, fatal error


def _status(results: list[Result]) -> int:
    fatal = [r[3] for r in results if r[3]]
    if fatal:
        raise CliError(fatal[0])
    return 1 if any(r[2] for r in results) else 0


def _summarize(out: Path, results: list[Result], as_json: bool = False) -> int:
    """One summary for all ranks (a line, then every failure; or one JSON object, schema in docs/cli.md);
    raises the first fatal error."""
    written, skipped = sum(r[0] for r in results), sum(r[1] for r in results)
    failed = [f for r in results for f in r[2]]
    if as_json:
        fatal = next((r[3] for r in results if r[3]), None)
        summary = {
            "out": str(out),
            "written": written,
            "skipped": skipped,
            "failed": [{"input": str(path), "error": why} for path, why in failed],
            "ranks": len(results),
            "fatal": fatal,
        }
        print(json.dumps(summary))
        return _status(results)
    ranks = f" on {len(results)} ranks" if len(results) > 1 else ""
    print(f"latents: {written} written, {skipped} skipped (already in {out}), {len(failed)} failed{ranks}")
    for path, why in failed:
        print(f"  failed {path}: {why}")
    return _status(results)


def _run(
    args: argparse.Namespace, model, names: list[str], inputs: list[Path], out: Path, progress: bool = True
) -> Result:
    settings = _settings(args, names, model.checkpoint_dir)
    device = model.text.embed_tokens.weight.device
    written, skipped, failed = 0, 0, []
    # on a terminal only, and not with -q (qwenvl_min.utils.progress); never on the other ranks
    bar = progress_bar(inputs, unit="input", enabled=False if args.no_progress or not progress else None)
    for path in bar:
        target = out / f"{path.stem}.safetensors"
        these = _input_settings(settings, path)
        if target.exists() or target.is_symlink():
            why = _existing(target, these)
            if why is None:
                skipped += 1
            else:
                failed.append(
                    (
                        path,
                        f"{target} already exists but {why}; left as is: remove it to redo this input, or choose another --out",
                    )
                )
            continue
        try:
            vision = preprocess(
                path,
                args.min_pixels,
                args.max_pixels,
                args.max_vision_tokens,
                model.checkpoint_dir,
                VideoFlags.from_args(args),
            )
            ids = vision_prompt(model.config, vision).to(device)
            with torch.inference_mode(), model.taps(read=names) as taps:
                model(ids, **{k: t.to(device) for k, t in vision.items()})
            tensors: dict[str, Tensor] = {}
            for name in names:
                tensors |= _tap_tensors(name, taps.cache[name])
            grid = vision.get("image_grid_thw", vision.get("video_grid_thw"))
            metadata = {
                "source": str(path.resolve()),
                "kind": "video" if is_video(path) else "image",
                "grid_thw": json.dumps(grid[0].tolist()),
                "taps": json.dumps(names),
                "model": str(model.checkpoint_dir),
                "model_type": model.config.model_type,
                "input_ids": json.dumps(ids[0].tolist()),
                "settings": json.dumps(these),
            }
        except (OSError, ValueError, ImportError) as err:
            failed.append((path, f"{type(err).__name__}: {err}"))
            log.warning("failed: %s: %s", path, err)
            continue
        try:
            _write_atomic(target, tensors, metadata)
        except OSError as err:
            if err.errno in _FATAL_WRITE_ERRORS:
                bar.close()
                raise CliError(
                    f"writing {target} failed: {err.strerror}; free space in {out} (or make it writable) and "
                    f"rerun to resume ({written} written before it, nothing partial left)"
                ) from None
            failed.append((path, f"{type(err).__name__}: {err}"))
            continue
        written += 1
    bar.close()
    return written, skipped, failed, None
