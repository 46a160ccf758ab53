"""`--model` takes a user's HF checkpoint directory or a Hub id: `run` answers with the checkpoint's chat
template, pixel budget and generation_config.json (the same tokens as the library calls), `latents` reads
taps from it; --verify on an HF directory is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_user_dir import make_user_dir
from PIL import Image
from safetensors import safe_open

from qwenvl_min import QwenVL
from qwenvl_min.cli.main import main
from qwenvl_min.generate import generate
from qwenvl_min.inputs.processor import Processor


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    make_user_dir(directory, "qwen2_5_vl", seed=4)
    return directory


def _image(path, w=84, h=56):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _expected_answer(directory, image, prompt: str) -> str:
    processor = Processor.from_pretrained(directory)
    model = QwenVL.from_pretrained(directory)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    batch = processor(text=processor.apply_chat_template(messages), images=[str(image)])
    new = generate(model, **batch, max_new_tokens=6)[0].tolist()
    stops = set(model.generation_settings.stop_token_ids)
    kept = []
    for token in new:
        if token in stops:
            break
        kept.append(token)
    return processor.tokenizer.decode(kept)


def test_run_with_an_hf_directory_and_a_hub_id(user_dir, tmp_path, capsys, monkeypatch):
    image = _image(tmp_path / "a.png")
    argv = ["run", "--image", str(image), "--prompt", "Describe it.", "--max-new-tokens", "6"]
    assert main([argv[0], "--model", str(user_dir), *argv[1:]]) == 0
    answer = capsys.readouterr().out
    assert answer.strip()  # some tokens before a stop (random weights)
    assert answer.rstrip("\n") == _expected_answer(user_dir, image, "Describe it.")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(user_dir))
    assert main([argv[0], "--model", "someone/tiny-qwen2.5-vl", *argv[1:]]) == 0
    assert capsys.readouterr().out == answer


def test_latents_from_an_hf_directory(user_dir, tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    argv = ["latents", "--model", str(user_dir), "--taps", "text.norm", "--out", str(out), str(image)]
    assert main([*argv, "--no-progress"]) == 0
    with safe_open(str(out / "a.safetensors"), framework="pt") as f:
        assert f.metadata()["model"] == str(user_dir.resolve())
        assert f.get_tensor("text.norm").dtype == torch.float32
    assert main([*argv, "--no-progress"]) == 0  # resumable: the same settings skip the input
    assert "1 skipped" in capsys.readouterr().out


def test_verify_needs_a_converted_checkpoint(user_dir, tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    argv = ["run", "--model", str(user_dir), "--verify", "--image", str(image), "--prompt", "hi"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no manifest to verify" in err


def test_run_compiled_gives_the_eager_answer(user_dir, tmp_path, capsys):
    """`run --compile MODE` goes through the compiled decoder (aot_eager: dynamo's capture, static cache
    and guards without inductor's C++ build, which would take minutes here) and answers as eager does;
    the CLI's NaN guard is a forward hook, which compiled decoding refuses, so it must not be installed."""
    image = _image(tmp_path / "a.png")
    argv = ["run", "--model", str(user_dir), "--image", str(image), "--prompt", "Describe it."]
    assert main([*argv, "--max-new-tokens", "6", "--compile", "aot_eager"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == _expected_answer(user_dir, image, "Describe it.")
    with pytest.raises(SystemExit):
        main([*argv, "--compile", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err
