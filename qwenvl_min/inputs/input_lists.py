"""Which files a dataset-scale run reads, and the name each one's output takes.

Inputs come as command-line arguments (files or directories) and as lists of paths or URLs, one a line
(`--files-from LIST`, `-` for stdin). A directory is walked recursively and keeps the files whose suffix
is an image's or a video's (below), in sorted order, skipping hidden files and folders (".*"). Output names:
- a file given by itself (an argument or a list line): its stem (`photos/cat.jpg` -> `cat`);
- a file found in a directory DIR: its path inside DIR without the suffix (`DIR/a/cat.jpg` -> `a/cat`), so a
  tree of images keeps its shape and the same file name in two folders is no clash;
- a URL: the stem of its path (`https://host/x/cat.jpg?s=1` -> `cat`).
Two inputs with the same output name are refused before any work (`duplicate_names`).
"""

from __future__ import annotations

import os
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg"})
URL_SCHEMES = ("http://", "https://", "file://")


@dataclass(frozen=True)
class InputSource:
    """One input: the name its output takes, and where to read it (a local path or a URL)."""

    name: str
    location: str

    @property
    def is_url(self) -> bool:
        return self.location.startswith(URL_SCHEMES)

    @property
    def suffix(self) -> str:
        path = urllib.parse.urlsplit(self.location).path if self.is_url else self.location
        return PurePosixPath(path).suffix.lower()

    @property
    def is_video(self) -> bool:
        return self.suffix in VIDEO_SUFFIXES


def source_of(location: str) -> InputSource:
    """A single file or URL, named by its stem."""
    path = urllib.parse.urlsplit(location).path if location.startswith(URL_SCHEMES) else location
    return InputSource(PurePosixPath(path).stem or "input", location)


def sources_in_directory(directory: Path) -> list[InputSource]:
    """Every image and video under `directory` (recursively, sorted; hidden files and folders skipped),
    named by its path inside it."""
    found = []
    for path in sorted(directory.rglob("*")):
        inside = path.relative_to(directory)
        if any(part.startswith(".") for part in inside.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and path.is_file():
            name = inside.with_suffix("").as_posix()
            found.append(InputSource(name, os.fspath(path)))
    return found


def read_list(stream: TextIO) -> list[str]:
    """The non-blank lines of a list (surrounding whitespace removed)."""
    return [line.strip() for line in stream if line.strip()]


def expand_inputs(arguments: Iterable[str], listed: Iterable[str] = ()) -> list[InputSource]:
    """Arguments then list lines, in order; directories walked (see the module docstring)."""
    sources: list[InputSource] = []
    for location in [*arguments, *listed]:
        if not location.startswith(URL_SCHEMES) and Path(location).is_dir():
            sources += sources_in_directory(Path(location))
        else:
            sources.append(source_of(location))
    return sources


def duplicate_names(names: Sequence[str]) -> list[str]:
    """The output names more than one input would take, sorted."""
    return sorted(name for name, n in Counter(names).items() if n > 1)
