"""Tensor parallelism (TP=2) and data-parallel latents on CPU with gloo: two spawned ranks, loopback only.

One spawn of tests/parallel/tp_worker.py runs every 2-rank check (bounded by a timeout); each rank compares the
TP model with the single-process model built from the same weights and reports the differences, and
this file asserts on them. Tolerance (fp32): max |TP - single| <= 1e-5 * max(1, max |single|) for
logits, pre/post-merge features, every decoder layer, sharded tap points and attention maps (the TP
sums run in a different order: one all-reduce of per-rank partial sums); generation tokens, loaded
checkpoints' logits and data-parallel latents are compared exactly where the computation is the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_checkpoints import write_sharded
from hf_models import randomize_, tiny_config
from PIL import Image
from safetensors import safe_open
from tiny_tokenizer import word_level_tokenizer

from qwenvl_min import Config, QwenVL
from qwenvl_min.cli.main import main
from qwenvl_min.parallel import TensorParallelError, check_tp_degree
from qwenvl_min.parallel.launch import init_distributed, tp_mesh
from qwenvl_min.weights_convert import our_state_dict_to_hf

TOLERANCE = 1e-5  # relative to max(1, max |single-process value|), fp32
SPAWN_TIMEOUT_S = 420
WORKER = Path(__file__).parent / "tp_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hf_checkpoint(directory: Path, cfg: Config, seed: int) -> Path:
    """Random weights in the published HF layout, sharded with an index (a tied model stores lm_head;
    MoE experts are stored transposed, as the published Qwen3-VL-MoE files hold them)."""
    model = QwenVL(cfg, kernels="torch")
    randomize_(model, seed)
    state = {k: v.contiguous() for k, v in our_state_dict_to_hf(cfg, model.state_dict()).items()}
    for key in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        state[key] = state[key].transpose(1, 2).contiguous()
    if cfg.text.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    directory.mkdir(parents=True)
    write_sharded(directory, state, per_shard=12)
    (directory / "config.json").write_text(json.dumps(cfg.to_hf()))
    return directory


def _prepare(work: Path) -> None:
    _hf_checkpoint(work / "hf", tiny_config("qwen2_vl", tied=True), seed=4)
    _hf_checkpoint(work / "hf_moe", tiny_config("qwen3_vl_moe", tied=False), seed=6)
    source = _hf_checkpoint(work / "hf25", tiny_config("qwen2_5_vl", tied=False), seed=5)
    assert main(["convert", str(source), str(work / "ours"), "--no-progress"]) == 0
    word_level_tokenizer(work / "ours" / "tokenizer.json", Config.preset("tiny-qwen2.5-vl"))
    (work / "images").mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(120, 90), (56, 84), (150, 60), (90, 90), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(work / "images" / f"im{i}.png")
    (work / "images" / "im5_broken.png").write_text("not an image")  # fails on one rank only


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    work = tmp_path_factory.mktemp("tp")
    _prepare(work)
    port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            TRITON_INTERPRET="1",
        )
        log = open(work / f"log{rank}.txt", "w")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(
            subprocess.Popen([sys.executable, str(WORKER), str(work)], env=env, stdout=log, stderr=log)
        )
    try:
        for proc in procs:
            proc.wait(timeout=SPAWN_TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, (work / f"log{rank}.txt").read_text()[-4000:]
    return work, [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]


CASES = [
    "qwen2_5_vl.untied",
    "qwen2_vl.tied",
    "qwen2_5_vl.tied.kv1",
    "qwen3_vl.untied",
    "qwen3_vl_moe.untied",
]


@pytest.mark.parametrize("case", CASES)
def test_tp2_matches_one_process(two_ranks, case):
    _, results = two_ranks
    for result in results:
        diffs = {k: v for k, v in result["diffs"].items() if k.startswith(case + ".")}
        assert f"{case}.logits" in diffs and f"{case}.tap.visual.merger.input" in diffs
        assert sum(".tap.text.layers." in k and k.count(".") == len(case.split(".")) + 3 for k in diffs) == 3
        too_far = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
        assert not too_far, too_far
        equal = {k: v for k, v in result["equal"].items() if k.startswith(case + ".")}
        assert equal and all(equal.values()), equal
        for check in ("class_unchanged", "compiled_generate_tokens", "keep_all_calls"):
            assert f"{case}.{check}" in equal
        assert sum(".keep_all." in k for k in diffs) == 9  # 3 calls x 3 names
    assert (f"{CASES[0]}.triton_vision") in results[0]["diffs"]


def test_sharded_loading_matches_the_full_model(two_ranks):
    _, results = two_ranks
    for result in results:
        for tag in ("load_hf", "load_ours", "load_hf_moe"):
            assert result["diffs"][f"{tag}.logits"] <= TOLERANCE
            assert result["equal"][f"{tag}.local_params_below_full"]


def test_data_parallel_latents_equal_one_process(two_ranks, tmp_path, capsys):
    work, _ = two_ranks
    images = sorted(str(p) for p in (work / "images").iterdir())
    taps = "visual.merger.input,text.layers.1"
    args = ["latents", "--model", str(work / "ours"), "--taps", taps, "--no-progress", "--batch-size", "1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks (OMP_NUM_THREADS=1): CPU reductions then agree bit for bit
    try:
        assert main([*args, "--out", str(tmp_path), *images]) == 1  # the broken image
    finally:
        torch.set_num_threads(threads)
    single = capsys.readouterr().out
    code, summary = (work / "latents0.txt").read_text().split("\n", 1)
    assert code == "1" and "5 written, 0 skipped" in summary and "1 failed on 2 ranks" in summary
    assert "im5_broken.png" in summary and "5 written, 0 skipped" in single
    # one summary, from rank 0, which alone exits 1 for the failed input (torchrun then reports one rank)
    assert (work / "latents1.txt").read_text().split("\n", 1) == ["0", ""]
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == sorted(p.name for p in (work / "dp_latents").glob("*.safetensors")) and len(names) == 5
    for name in names:
        with (
            safe_open(str(tmp_path / name), "pt") as a,
            safe_open(str(work / "dp_latents" / name), "pt") as b,
        ):
            assert a.metadata() == b.metadata()
            for key in a.keys():
                assert torch.equal(b.get_tensor(key), a.get_tensor(key)), (name, key)
    # resumable: a rerun in one process finds every output and skips it
    assert main([*args, "--out", str(work / "dp_latents"), *images[:-1]]) == 0
    assert "0 written, 5 skipped" in capsys.readouterr().out


def test_run_tp2_streams_the_one_process_answer(two_ranks, capsys):
    work, _ = two_ranks
    image = sorted((work / "images").iterdir())[0]
    argv = ["run", "--model", str(work / "ours"), "--image", str(image), "--prompt", "describe it"]
    assert main([*argv, "--max-new-tokens", "6"]) == 0
    single = capsys.readouterr().out
    assert (work / "run0.txt").read_text() == f"0\n{single}" and single.strip()
    assert (work / "run1.txt").read_text() == "0\n"  # only rank 0 prints
    # --compile on the TP model: the plan's own hooks do not block it, and the answer is the eager one
    assert (work / "run_compiled0.txt").read_text() == f"0\n{single}"
    assert (work / "run_compiled1.txt").read_text() == "0\n"


# ---- errors (no spawn) -----------------------------------------------------------------------------------
def test_a_tp_degree_that_does_not_divide_names_the_dimension():
    with pytest.raises(TensorParallelError, match="vision mlp_hidden .* = 3420"):
        check_tp_degree(Config.preset("qwen2.5-vl-7b"), 8)
    with pytest.raises(TensorParallelError, match="text num_heads = 28"):
        check_tp_degree(Config.preset("qwen2-vl-7b"), 8)
    cfg = Config.preset("qwen2.5-vl-72b")
    check_tp_degree(cfg, 8)
    check_tp_degree(cfg, 16)  # 8 kv heads, replicated in pairs
    tiny = tiny_config("qwen2_5_vl", tied=True)  # every width divisible by 3 but 2 kv heads
    vision = dataclasses.replace(tiny.vision, width=96, num_heads=3, mlp_hidden=96, out_width=96)
    text = dataclasses.replace(
        tiny.text, hidden_size=96, num_heads=6, num_kv_heads=2, intermediate_size=96, vocab_size=258
    )
    with pytest.raises(TensorParallelError, match="num_kv_heads = 2"):
        check_tp_degree(dataclasses.replace(tiny, vision=vision, text=text), 3)


def test_launch_errors_name_what_is_missing(monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TensorParallelError, match="rendezvous variables RANK, LOCAL_RANK, MASTER_ADDR"):
        init_distributed("cpu")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["run", "--model", "x", "--prompt", "hi", "--tp", "2"]) == 1
    assert "rendezvous variables RANK, WORLD_SIZE" in capsys.readouterr().err
    context = type("C", (), {"world_size": 4})()
    with pytest.raises(TensorParallelError, match="--tp 2 but 4 processes"):
        tp_mesh(context, 2)
