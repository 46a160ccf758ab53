"""Companion files (tokenizer, chat template, processor settings) that travel with the weights, checked
for what they claim to be before anything is written.

A checkpoint directory is untrusted input: `tokenizer.json` may be a symlink to any file on the machine
(a private key would otherwise be copied into DST and checksummed in the manifest). So each companion
- must resolve inside the checkpoint directory, or, for a Hugging Face cache snapshot
  (`.../snapshots/<revision>/`), inside that repository's `blobs/` directory (the cache links
  `snapshots/<rev>/tokenizer.json` -> `../../blobs/<hash>`), and nowhere else;
- must be a regular file of at most MAX_COMPANION_BYTES;
- must parse as what its name says: `.json` a JSON object, text files (`merges.txt`, `.jinja`) UTF-8
  without NUL bytes.
The bytes that were checked are the bytes written, so the file cannot change between check and copy.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .checkpoint import CheckpointError

COMPANION_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
)
MAX_COMPANION_BYTES = 64 * 1024 * 1024  # tokenizer.json of the released models is ~7 MB


def read_companions(src_dir: Path) -> dict[str, bytes]:
    """{name: checked content} for every companion file SRC has."""
    src_dir = Path(src_dir).resolve()
    roots = [src_dir]
    if src_dir.parent.name == "snapshots":  # huggingface_hub cache layout
        roots.append(src_dir.parent.parent / "blobs")
    found = {}
    for name in COMPANION_FILES:
        path = src_dir / name
        if not os.path.lexists(path):
            continue
        found[name] = _read_checked(path, name, roots, src_dir)
    return found


def _read_checked(path: Path, name: str, roots: list[Path], src_dir: Path) -> bytes:
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # dangling link, loop
        raise CheckpointError(
            f"{path} is a broken link ({err}); remove it or put the real {name} there"
        ) from None
    if not any(real.parent == root or root in real.parents for root in roots):
        raise CheckpointError(
            f"{path} links to {real}, outside the checkpoint {src_dir}; companion files are only read "
            f"from inside it: copy the real {name} into {src_dir}"
        )
    info = real.stat()
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file; {name} must be one")
    if info.st_size > MAX_COMPANION_BYTES:
        raise CheckpointError(
            f"{path} is {info.st_size} bytes, over the {MAX_COMPANION_BYTES // 2**20} MiB a {name} may be; "
            "it is not the file its name says"
        )
    data = real.read_bytes()[: MAX_COMPANION_BYTES + 1]
    if len(data) > MAX_COMPANION_BYTES:
        raise CheckpointError(f"{path} grew while being read; copy it again")
    if name.endswith(".json"):
        try:
            ok = isinstance(json.loads(data), dict)
        except (UnicodeDecodeError, ValueError, RecursionError):
            ok = False
        if not ok:
            raise CheckpointError(
                f"{path} is not a JSON object, which a {name} is; replace it with the checkpoint's real {name}"
            )
    else:
        try:
            data.decode("utf-8")
            text_ok = b"\0" not in data
        except UnicodeDecodeError:
            text_ok = False
        if not text_ok:
            raise CheckpointError(
                f"{path} is not UTF-8 text, which a {name} is; replace it with the checkpoint's real {name}"
            )
    return data
