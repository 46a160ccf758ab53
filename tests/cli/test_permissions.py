"""Created directories and files get the permissions the umask gives (0o777 / 0o666 & ~umask), not the 0700 /
0600 of temporary names: converted checkpoints (new, nested, and replaced with --force), latents outputs,
and the inspect / attend pictures."""

from __future__ import annotations

import os
import stat

import pytest
from test_cli import _save_image, checkpoint  # noqa: F401  (the converted tiny checkpoint fixture)

from qwenvl_min.cli.main import main


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _check_tree(root, umask: int) -> None:
    assert _mode(root) == 0o777 & ~umask, root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            assert _mode(os.path.join(dirpath, name)) == 0o777 & ~umask, name
        for name in filenames:
            assert _mode(os.path.join(dirpath, name)) == 0o666 & ~umask, name


def test_converted_checkpoints_follow_the_umask(checkpoint, tmp_path, umask):  # noqa: F811
    hf = tmp_path / "hf"
    assert main(["convert", str(checkpoint), str(hf), "--to-hf", "--no-progress"]) == 0
    _check_tree(hf, umask)
    nested = tmp_path / "a" / "b" / "ours"  # parents created on the way
    assert main(["convert", str(hf), str(nested), "--no-progress"]) == 0
    _check_tree(tmp_path / "a", umask)
    assert main(["convert", str(hf), str(nested), "--force", "--no-progress"]) == 0  # the exchange path
    _check_tree(tmp_path / "a", umask)


def test_latents_and_pictures_follow_the_umask(checkpoint, tmp_path, umask):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    out = tmp_path / "latents" / "run1"
    argv = ["latents", "--model", str(checkpoint), "--taps", "text.norm", "--out", str(out), str(image)]
    assert main(argv) == 0
    _check_tree(tmp_path / "latents", umask)
    picture = tmp_path / "tiling.png"
    assert main(["inspect", str(image), "--png", str(picture)]) == 0
    assert _mode(picture) == 0o666 & ~umask
