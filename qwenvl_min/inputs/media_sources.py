"""Where a chat message's image or video comes from: a PIL image, a path, a file:// URI, a data: URI, or an
http(s) URL fetched with the standard library (urllib).

URLs are fetched with a timeout and a size cap: the stated Content-Length is checked before reading, and
the body is read in chunks that stop at the cap (a server may state no length, or a wrong one). Offline,
or on any HTTP error, the error names the URL and says to download it and pass a path: nothing is skipped.
A video URL is downloaded to a temporary file that is removed when decoding is done (`video_file`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .budget import check_source_size
from .preprocess import load_rgb

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchLimits:
    """How URLs are fetched: seconds to wait for the server, bytes one download may have."""

    timeout_s: float = 30.0
    max_bytes: int = 1 << 30  # 1 GiB


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _local_path(source: str) -> str:
    """A path, or a file:// URI (file:///abs/path, percent-escapes decoded) -> a path."""
    if source.startswith("file://"):
        parsed = urllib.parse.urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{source!r}: file:// URIs must name a local file (file:///path)")
        return urllib.request.url2pathname(parsed.path)
    return source


def fetch(url: str, limits: FetchLimits) -> bytes:
    """The body of an http(s) URL, at most `limits.max_bytes`, or a one-line error naming the URL."""
    advice = "download it and pass a local path"
    request = urllib.request.Request(url, headers={"User-Agent": "qwenvl-min"})
    try:
        with urllib.request.urlopen(request, timeout=limits.timeout_s) as response:
            stated = response.headers.get("Content-Length")
            if stated is not None and stated.isdigit() and int(stated) > limits.max_bytes:
                raise ValueError(
                    f"{url} is {int(stated)} bytes, over the download limit of {limits.max_bytes} bytes; "
                    f"{advice}, or raise max_download_bytes"
                )
            chunks, size = [], 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ValueError(
                        f"{url} is over the download limit of {limits.max_bytes} bytes; {advice}, or raise "
                        "max_download_bytes"
                    )
                chunks.append(chunk)
    except urllib.error.HTTPError as e:
        raise ValueError(f"could not fetch {url} (HTTP {e.code} {e.reason}); {advice}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"could not fetch {url} ({reason}); offline? {advice}") from None
    return b"".join(chunks)


def _data_uri_bytes(source: str) -> bytes:
    header, sep, payload = source.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError(f"data: URIs must be base64 (data:image/png;base64,...), got {source[:40]!r}...")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the base64 payload of {header},... is not valid base64") from None


def _image_from_bytes(data: bytes, where: str) -> Image.Image:
    """The image in `data`; `where` names its source in errors (a URL, or "a data: URI (data:image/png;...)")."""
    try:
        image = Image.open(io.BytesIO(data))
        check_source_size(f"the image in {where}", image.width, image.height)
        image.load()
    except UnidentifiedImageError:
        raise ValueError(f"{where} holds no image PIL can read (PNG, JPEG, WebP, ...)") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"the image in {where} is over PIL's decoding limit ({e})") from None
    except OSError as e:
        raise ValueError(f"could not read the image in {where}: {e}") from e
    return image


def image_source(source: Any, limits: FetchLimits) -> Image.Image:
    """An image item's payload -> an upright RGB PIL image (EXIF applied, alpha onto white: `load_rgb`)."""
    if isinstance(source, Image.Image):
        return load_rgb(source)
    if isinstance(source, (os.PathLike, np.ndarray)):
        return load_rgb(source)
    if not isinstance(source, str):
        raise TypeError(
            f"an image must be a PIL image, a uint8 array, a path, a file:// / data: URI or an http(s) URL, got "
            f"{type(source).__name__}"
        )
    if _is_url(source):
        return load_rgb(_image_from_bytes(fetch(source, limits), source))
    if source.startswith("data:"):
        if not source.startswith("data:image/"):
            raise ValueError(
                f"a data: URI for an image must be data:image/...;base64, got {source[:30]!r}..."
            )
        header = source.partition(",")[0]
        return load_rgb(_image_from_bytes(_data_uri_bytes(source), f"a data: URI ({header},...)"))
    return load_rgb(_local_path(source))


@contextlib.contextmanager
def video_file(source: str | os.PathLike, limits: FetchLimits) -> Iterator[str]:
    """A video item's payload -> a local path for as long as the block runs (URLs: a temporary file)."""
    if isinstance(source, os.PathLike):
        yield os.fspath(source)
        return
    if source.startswith("data:"):
        raise ValueError(
            "data: URIs are supported for images only; save the video to a file and pass its path"
        )
    if not _is_url(source):
        yield _local_path(source)
        return
    data = fetch(source, limits)
    suffix = os.path.splitext(urllib.parse.urlparse(source).path)[1][:8]
    with tempfile.TemporaryDirectory(prefix="qwenvl-min-") as folder:
        path = os.path.join(folder, "video" + suffix)
        with open(path, "wb") as file:
            file.write(data)
        yield path
