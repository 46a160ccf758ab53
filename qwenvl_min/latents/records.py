"""What is stored for one input, the settings that decide it, and the one-file-per-input output.

Every output (a `.safetensors` file, or a sample of a WebDataset shard: `shards`) holds the input's tap
tensors and this metadata (JSON values; in a safetensors header each non-string value is JSON text):

    source       the input's resolved path or URL          kind       "image" | "video"
    grid_thw     [t, h, w] in patches                       input_ids  the token ids the model saw
    taps         the tap names                              model, model_type
    settings     the resume key (`run_settings`)            video      videos: `prepare.video_timing`

Resuming: an output is taken as finished only if its recorded settings equal this run's (taps, the
checkpoint's fingerprint, dtype, pixel and frame budgets, prompt, layout; a video's also its sampling
rules). How inputs were packed, the number of workers and the device are not part of it: they change the
values by fp32 rounding at most. A key that older outputs lack is compared as its default.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from ..model.attention import SegmentMaps
from ..model.qwenvl import QwenVL
from ..utils.faults import pause_point
from ..utils.fs import write_atomic
from ..weights_convert.safetensors_io import (
    DTYPE_NAMES,
    SafetensorsFormatError,
    header_sha256,
    read_header,
    write_safetensors,
)
from .prepare import VIDEO_RULES, LatentInput, Recipe

SETTING_DEFAULTS = {"layout": "rows", "prompt": None}  # what outputs of older versions were made with
FATAL_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def checkpoint_fingerprint(directory: Path) -> str:
    """sha256 naming a checkpoint's weights cheaply: our manifest when there is one, else config.json and
    every safetensors file's size and header (names, dtypes, shapes, offsets)."""
    manifest = directory / "manifest.json"
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size}:{header_sha256(path)}".encode())
    return digest.hexdigest()


def run_settings(
    model: QwenVL, taps: list[str], recipe: Recipe, layout: str, dtype: str | None
) -> dict[str, Any]:
    """The resume key of a run (`dtype`: the name asked for, None for the checkpoint's own)."""
    if model.checkpoint_dir is None:
        raise ValueError("latents records which checkpoint made them: load the model with from_pretrained")
    r = recipe
    return {
        "taps": taps,
        "model_manifest_sha256": checkpoint_fingerprint(model.checkpoint_dir),
        "dtype": dtype or "stored",
        "min_pixels": r.min_pixels,
        "max_pixels": r.max_pixels,
        "fps": r.fps,
        "num_frames": r.num_frames,
        "max_frames": r.max_frames,
        "total_pixels": r.total_pixels,
        "prompt": r.prompt,
        "layout": layout,
    }


def input_settings(settings: dict[str, Any], is_video: bool) -> dict[str, Any]:
    """A video's frames also depend on the sampling rules: outputs made before them are not reused."""
    return settings | {"video_rules": VIDEO_RULES} if is_video else settings


def settings_problem(recorded: object, settings: dict[str, Any]) -> str | None:
    """None if an output recorded with `recorded` settings is a finished one for `settings`, else why not."""
    if not isinstance(recorded, dict):
        return "was not written by this version of `latents` (no settings in its metadata)"
    differ = sorted(k for k in settings if recorded.get(k, SETTING_DEFAULTS.get(k)) != settings[k])
    if differ:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} there, {settings[k]!r} now" for k in differ)
        return f"was made with other settings ({shown})"
    return None


def record_metadata(
    model: QwenVL, item: LatentInput, taps: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """The metadata stored with one input's tensors (see the module docstring)."""
    return item.metadata | {
        "taps": taps,
        "model": str(model.checkpoint_dir),
        "model_type": model.config.model_type,
        "input_ids": item.input_ids.tolist(),
        "settings": input_settings(settings, item.kind == "video"),
    }


def header_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """Metadata as a safetensors header holds it: strings as they are, anything else as JSON text."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def stored_tensors(values: dict[str, Any]) -> dict[str, Tensor]:
    """Tap values as named CPU tensors: tower attention maps are stored per segment-length group."""
    out: dict[str, Tensor] = {}
    for name, value in values.items():
        if isinstance(value, SegmentMaps):
            for g, (probs, index) in enumerate(zip(value.probs, value.token_index)):
                out[f"{name}.group{g}.probs"] = probs
                out[f"{name}.group{g}.token_index"] = index
        else:
            out[name] = value
    cpu = {k: t.detach().cpu().contiguous() for k, t in out.items()}
    bad = sorted({str(t.dtype) for t in cpu.values() if t.dtype not in DTYPE_NAMES})
    if bad:
        raise ValueError(f"taps of dtype {bad} cannot be stored in safetensors")
    return cpu


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, Any]) -> bytes:
    """One input's record as the bytes of a safetensors file (a WebDataset sample's `.safetensors`)."""
    from safetensors.torch import save

    return save(tensors, metadata=header_metadata(metadata))


class SafetensorsFiles:
    """`--format safetensors`: OUT/<name>.safetensors per input, each written to a temporary name in the
    same directory and renamed, so a file there is always complete."""

    suffix = ".safetensors"

    def __init__(self, out: Path) -> None:
        self.out = out

    def path(self, name: str) -> Path:
        return self.out / f"{name}{self.suffix}"

    def clean_stale(self) -> None:
        """Temporary files of killed runs (the caller holds OUT's lock: no live run writes them)."""
        for tmp in self.out.rglob(f".*{self.suffix}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)

    def problem(self, name: str, settings: dict[str, Any]) -> str | None | bool:
        """False: not there yet; None: finished with these settings; else why it cannot be reused."""
        target = self.path(name)
        if not (target.exists() or target.is_symlink()):
            return False
        try:
            header = read_header(target)
        except (SafetensorsFormatError, OSError) as err:
            why = f"is not a complete latents file ({err})"
        else:
            try:
                recorded = json.loads(header.metadata.get("settings", "null"))
            except json.JSONDecodeError:
                recorded = None
            why = settings_problem(recorded, settings)
        if why is None:
            return None
        return f"{target} already exists but {why}; left as is: remove it to redo this input, or choose another --out"

    def write(self, name: str, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        entries = [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]

        def write(tmp: Path) -> None:
            write_safetensors(tmp, entries, tensors.__getitem__, header_metadata(metadata))
            pause_point("latents.before_rename")

        write_atomic(target, write)

    def close(self) -> None:
        """Nothing is open between inputs."""
