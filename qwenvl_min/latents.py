"""`qwenvl-min latents`: chosen taps for many inputs, one .safetensors file per input.

- Resumable: an existing output is skipped only if it is a complete safetensors file made with the same
  settings (taps, model weights, dtype, pixel budget; recorded in its metadata). Anything else at that
  name is reported as a failure and left untouched: never mixed into the results, never deleted.
- Atomic: each file is written to a temporary name and renamed (permissions from the umask); a SIGTERM
  removes the temporary file, and temporary files a SIGKILL left are removed by the next run.
- Exclusive: a lock file in OUT stops a second run writing into the same directory.
- A bad input (unreadable, over the budget, a decompression bomb) is reported and skipped; a full disk
  or a read-only OUT stops the run with one error line. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from .cli_support import (
    CliError,
    checkpoint_fingerprint,
    is_video,
    load_model,
    preprocess,
    vision_prompt,
)
from .faults import pause_point
from .fs import ExclusiveLock, LockedError, write_atomic
from .taps import SegmentMaps, TapError, Taps
from .weights_convert.safetensors_io import (
    DTYPE_NAMES,
    SafetensorsFormatError,
    read_header,
    write_safetensors,
)

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
    assert isinstance(value, Tensor), f"tap {name} gave {type(value).__name__}"
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


def _settings(args: argparse.Namespace, names: list[str], checkpoint_dir: Path) -> dict[str, object]:
    """What decides an output's content: resuming requires all of it to match."""
    return {
        "taps": names,
        "model_manifest_sha256": checkpoint_fingerprint(checkpoint_dir),
        "dtype": args.dtype or "stored",
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }


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
    model = load_model(args.model, args.dtype, args.device, args.verify)
    try:
        Taps(model, read=names)  # check the names before any work
    except TapError as err:
        raise CliError(err.args[0]) from err
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = ExclusiveLock(out / LOCK_NAME)
        lock.acquire()
    except LockedError as err:
        raise CliError(
            f"another `latents` run is writing into {out} ({err.strerror}); wait for it or choose another --out"
        ) from None
    except OSError as err:
        raise CliError(f"cannot write into {out}: {err.strerror or err}; choose another --out") from None
    try:
        _clean_stale(out)
        return _run(args, model, names, inputs, out)
    finally:
        lock.release()


def _run(args: argparse.Namespace, model, names: list[str], inputs: list[Path], out: Path) -> int:
    from tqdm import tqdm

    settings = _settings(args, names, model.checkpoint_dir)
    device = model.text.embed_tokens.weight.device
    written, skipped, failed = 0, 0, []
    bar = tqdm(inputs, unit="input", disable=args.no_progress, file=sys.stderr)
    for path in bar:
        target = out / f"{path.stem}.safetensors"
        if target.exists() or target.is_symlink():
            why = _existing(target, settings)
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
                path, args.min_pixels, args.max_pixels, args.max_vision_tokens, model.checkpoint_dir
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
                "settings": json.dumps(settings),
            }
        except (OSError, ValueError, ImportError) as err:
            failed.append((path, f"{type(err).__name__}: {err}"))
            tqdm.write(f"failed: {path}: {err}", file=sys.stderr)
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
    print(f"latents: {written} written, {skipped} skipped (already in {out}), {len(failed)} failed")
    for path, why in failed:
        print(f"  failed {path}: {why}")
    return 1 if failed else 0
