"""Fault injection on the converter: kill -9 and SIGTERM mid-conversion and mid-swap, two conversions
racing for one DST, a DST created during a run, --force next to files it did not write, a full disk,
hostile companion files, unloadable dtypes, NaN weights and overflowing casts. Nothing lost, nothing
planted, nothing partial left, and every refusal one clear CheckpointError."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid

import pytest
import torch
from faults import Paused, convert_argv, digest, listing, tiny_hf_checkpoint
from safetensors.torch import save_file

from qwenvl_min.utils import faults
from qwenvl_min.weights_convert import CheckpointError, convert_checkpoint
from qwenvl_min.weights_convert import destination as destination_module


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return tiny_hf_checkpoint(tmp_path_factory.mktemp("hf") / "src")


@pytest.fixture
def src(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "src")


@pytest.fixture
def hook():
    """Register an in-process callback at a pause point."""
    yield faults.HOOKS.__setitem__
    faults.HOOKS.clear()


# ---- kills and signals ---------------------------------------------------------------------------------
def test_kill9_mid_conversion_leaves_no_dst_and_the_rerun_removes_the_staging(src, tmp_path):
    out = tmp_path / "out"
    child = Paused(
        convert_argv(src, out / "ours", "--shard-size", "200KB"), "convert.shard_written", tmp_path / "p"
    )
    child.proc.kill()
    child.finish()
    assert not (out / "ours").exists()
    assert any(name.startswith(".ours.partial-") for name in listing(out))  # what SIGKILL leaves
    convert_checkpoint(src, out / "ours")
    assert listing(out) == ["ours"]  # staging of the killed run and its lock file are gone


def test_sigterm_mid_conversion_cleans_up_and_exits_143(src, tmp_path):
    out = tmp_path / "out"
    child = Paused(
        convert_argv(src, out / "ours", "--shard-size", "200KB"), "convert.shard_written", tmp_path / "p"
    )
    child.proc.send_signal(signal.SIGTERM)
    code, _, err = child.finish()
    assert code == 143 and err.strip().splitlines() == [err.strip()] and err.startswith("error: terminated")
    assert not out.exists() or listing(out) == []


def test_kill9_before_the_force_swap_keeps_the_old_output(src, tmp_path):
    dst = convert_checkpoint(src, tmp_path / "ours")
    before = digest(dst)
    child = Paused(convert_argv(src, dst, "--force"), "convert.before_commit", tmp_path / "p")
    child.proc.kill()
    child.finish()
    assert digest(dst) == before
    convert_checkpoint(src, dst, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "p", "src"]


def test_two_conversions_race_for_one_dst(src, tmp_path):
    dst = tmp_path / "ours"
    child = Paused(convert_argv(src, dst), "convert.before_commit", tmp_path / "p")
    try:
        with pytest.raises(
            CheckpointError, match=rf"another conversion is writing .*ours.*pid {child.proc.pid}"
        ):
            convert_checkpoint(src, dst)
        with pytest.raises(CheckpointError, match="another conversion is writing"):
            convert_checkpoint(src, dst, force=True)
    finally:
        child.release()
    code, out, err = child.finish()
    assert code == 0, err
    assert (dst / "manifest.json").is_file() and not (tmp_path / ".ours.lock").exists()


# ---- the destination is re-checked at the swap ---------------------------------------------------------
def test_a_dst_created_during_the_run_is_never_replaced(src, tmp_path, hook):
    dst = tmp_path / "ours"

    def user_creates_dst():
        dst.mkdir()
        (dst / "thesis.tex").write_text("mine")

    hook("convert.before_commit", user_creates_dst)
    with pytest.raises(CheckpointError, match="appeared while converting"):
        convert_checkpoint(src, dst)
    assert listing(dst) == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "src"]

    shutil.rmtree(dst)
    hook("convert.before_commit", lambda: dst.mkdir())  # even an empty one: rename would replace it
    with pytest.raises(CheckpointError, match="appeared while converting"):
        convert_checkpoint(src, dst)


def test_force_rechecks_a_dst_that_changed_during_the_run(src, tmp_path, hook):
    dst = convert_checkpoint(src, tmp_path / "ours")
    hook("convert.before_commit", lambda: (dst / "notes.txt").write_text("added meanwhile"))
    with pytest.raises(CheckpointError, match=r"refusing to replace .*notes\.txt"):
        convert_checkpoint(src, dst, force=True)
    assert (dst / "notes.txt").read_text() == "added meanwhile"


def test_force_never_deletes_files_it_did_not_write(src, tmp_path):
    dst = convert_checkpoint(src, tmp_path / "ours")
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"refusing to replace .*\['notes\.txt'\].*did not write"):
        convert_checkpoint(src, dst, force=True)
    assert (dst / "notes.txt").read_text() == "keep me"

    fake = tmp_path / "fake"  # a manifest that claims to be ours is not enough
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps({"format": "qwenvl-min", "shards": []}))
    (fake / "data.csv").write_text("1,2,3")
    with pytest.raises(CheckpointError, match=r"refusing to replace .*data\.csv"):
        convert_checkpoint(src, fake, force=True)
    assert (fake / "data.csv").is_file()


def test_force_swap_without_rename_exchange_recovers_from_a_kill(src, tmp_path, monkeypatch):
    monkeypatch.setattr(destination_module, "rename_exchange", lambda a, b: False)
    dst = convert_checkpoint(src, tmp_path / "ours")
    before = digest(dst)
    convert_checkpoint(src, dst, force=True)  # the two-rename path
    assert digest(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ours", "src"]

    hidden = tmp_path / f".ours.old-{uuid.uuid4().hex[:6]}"  # a kill between the two renames
    hidden.mkdir()
    os.rename(dst, hidden / "ours")
    with pytest.raises(CheckpointError, match="already exists"):  # the next run first puts it back
        convert_checkpoint(src, dst)
    assert digest(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ours", "src"]


def test_permissions_follow_the_umask(src, tmp_path):
    old = os.umask(0o022)
    try:
        dst = convert_checkpoint(src, tmp_path / "ours")
    finally:
        os.umask(old)
    assert dst.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in dst.iterdir()} == {0o644}


def test_disk_full_on_a_small_tmpfs(src, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        with pytest.raises(CheckpointError, match="No space left on device"):
            convert_checkpoint(src, mount / "ours")  # ~1.9 MB of weights into 1 MB
        assert listing(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ---- hostile companion files ---------------------------------------------------------------------------
def test_a_companion_symlink_out_of_the_source_is_refused(src, tmp_path):
    secret = tmp_path / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (src / "tokenizer.json").symlink_to(secret)
    with pytest.raises(
        CheckpointError, match=r"tokenizer\.json links to .*id_ed25519, outside the checkpoint"
    ):
        convert_checkpoint(src, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()

    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to(src / "config.json")  # inside the tree: fine, if it parses
    (src / "merges.txt").write_bytes(b"\x00\xff binary")
    with pytest.raises(CheckpointError, match=r"merges\.txt is not UTF-8 text"):
        convert_checkpoint(src, tmp_path / "ours")
    (src / "merges.txt").unlink()
    os.mkfifo(src / "vocab.json")
    with pytest.raises(CheckpointError, match=r"vocab\.json is not a regular file"):
        convert_checkpoint(src, tmp_path / "ours")


def test_a_companion_that_is_not_what_its_name_says_is_refused(src, tmp_path):
    (src / "tokenizer_config.json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json is not a JSON object"):
        convert_checkpoint(src, tmp_path / "ours")


def test_hf_cache_snapshot_links_into_blobs_are_allowed(src, tmp_path):
    repo = tmp_path / "hub" / "models--Qwen--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (src / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel"}}))
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        blob = repo / "blobs" / f"sha-{name}"
        shutil.copyfile(src / name, blob)
        (snapshot / name).symlink_to(os.path.join("..", "..", "blobs", blob.name))
    dst = convert_checkpoint(snapshot, tmp_path / "ours")
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert not (dst / "tokenizer.json").is_symlink()


# ---- weights that could not be used ---------------------------------------------------------------------
def _retype(src, change) -> None:
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    change(state)
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda s: s.update({"model.norm.weight": s["model.norm.weight"].to(torch.float8_e4m3fn)}),
            "float8_e4m3fn cannot be loaded.*--dtype",
        ),
        (
            lambda s: s.update({"model.norm.weight": s["model.norm.weight"].to(torch.int64)}),
            "int64 cannot be loaded.*integer tensors",
        ),
        (
            lambda s: s.update({"model.norm.weight": s["model.norm.weight"].half()}),
            r"mix dtypes .*--dtype float32",
        ),
    ],
    ids=["float8", "int64", "mixed"],
)
def test_unloadable_dtypes_are_refused_before_writing(src, tmp_path, change, match):
    _retype(src, change)
    with pytest.raises(CheckpointError, match=match):
        convert_checkpoint(src, tmp_path / "ours")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_mixed_dtypes_convert_with_an_explicit_dtype(src, tmp_path):
    _retype(src, lambda s: s.update({"model.norm.weight": s["model.norm.weight"].half()}))
    dst = convert_checkpoint(src, tmp_path / "ours", dtype="bf16")
    assert json.loads((dst / "manifest.json").read_text())["dtype"] == "bfloat16"


def test_narrowing_that_overflows_is_refused(src, tmp_path):
    _retype(src, lambda s: s["model.norm.weight"].__setitem__(0, 1e6))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight: values up to 1e\+06 overflow float16"):
        convert_checkpoint(src, tmp_path / "ours", dtype="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    convert_checkpoint(src, tmp_path / "ours", dtype="bf16")  # bf16 keeps fp32's range


def test_nan_weights_are_refused(src, tmp_path):
    _retype(src, lambda s: s["model.layers.0.mlp.up_proj.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(CheckpointError, match=r"up_proj\.weight in .* holds 1 NaN/inf"):
        convert_checkpoint(src, tmp_path / "ours")
