"""Every command says what it did, by the one rule of `qwenvl_min.utils.console` (docs/cli.md): results on
stdout, status on stderr (silenced by -q). `run` reports token counts, time to first token, tokens per second
and why it stopped (and all of it with --json), `run --compile` says it is compiling, `demo -q` silences its
status and its `wrote:` line is status, and `inspect` writes a picture only when asked, never over a file
without --force, and reports the budget of the checkpoint given with --model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from test_cli import CONTEXT, _save_image, checkpoint  # noqa: F401  (the converted tiny checkpoint fixture)

from qwenvl_min.cli.main import main

RUN_FIELDS = {  # docs/cli.md, `run --json`
    "answer": str,
    "prompt_tokens": int,
    "vision_tokens": int,
    "new_tokens": int,
    "time_to_first_token_s": float,
    "tokens_per_s": (float, type(None)),
    "stopped": str,
    "stop_token": (str, type(None)),
}
STATUS = re.compile(
    r"^prompt (\d+) tokens \((\d+) vision\) \| first token after \d+\.\d\d s \| (\d+) new tokens"
    r"(, \d+\.\d tokens/s)? \| stopped: (stop token <\|im_end\|>|reached --max-new-tokens)$"
)


def _run(checkpoint, image, *extra: str) -> list[str]:  # noqa: F811
    return ["run", "--model", str(checkpoint), "--image", str(image), "--prompt", "describe it", *extra]


def test_run_reports_what_the_answer_cost(tmp_path, checkpoint, capsys):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)  # 4 x 4 patches -> 4 merged tokens
    assert main(_run(checkpoint, image, "--max-new-tokens", "4", "--temperature", "0")) == 0
    captured = capsys.readouterr()
    status = captured.err.strip().splitlines()
    assert len(status) == 1, captured.err
    match = STATUS.match(status[0])
    assert match, status[0]
    prompt, vision, new = (int(match.group(i)) for i in (1, 2, 3))
    assert vision == 4 and 4 < prompt <= CONTEXT and 0 <= new <= 4
    assert (match.group(5) == "reached --max-new-tokens") == (new == 4)
    answer = captured.out.rstrip("\n")
    assert answer and len(answer.split()) == new  # the word-level tokenizer: one word a token

    assert main(["-q", *_run(checkpoint, image, "--max-new-tokens", "4", "--temperature", "0")]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == captured.out  # -q: the answer alone

    assert main(_run(checkpoint, image, "--max-new-tokens", "4", "--temperature", "0", "--json")) == 0
    as_json = capsys.readouterr()
    record = json.loads(as_json.out)  # stdout is exactly one JSON object: no streamed text before it
    assert set(record) == set(RUN_FIELDS)
    for field, kind in RUN_FIELDS.items():
        assert isinstance(record[field], kind), field
    assert record["answer"] == answer
    assert (record["prompt_tokens"], record["vision_tokens"], record["new_tokens"]) == (prompt, vision, new)
    assert record["stopped"] in ("stop_token", "max_new_tokens")
    assert (record["stop_token"] == "<|im_end|>") == (record["stopped"] == "stop_token")
    assert STATUS.match(as_json.err.strip())  # the status line is still status


def test_run_stopped_by_the_length_limit_says_so(tmp_path, checkpoint, capsys):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    argv = _run(checkpoint, image, "--max-new-tokens", "1", "--json", "--temperature", "1", "--seed", "0")
    for seed in range(20):  # a seed whose first token is not the stop token (random tiny weights)
        argv[-1] = str(seed)
        assert main(argv) == 0
        record = json.loads(capsys.readouterr().out)
        if record["stopped"] == "max_new_tokens":
            break
    assert record == record | {"stopped": "max_new_tokens", "stop_token": None, "new_tokens": 1}
    assert record["tokens_per_s"] is None  # one token: no decoding step to time


def test_run_compile_says_it_is_compiling(tmp_path, checkpoint, capsys):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    assert main(_run(checkpoint, image, "--max-new-tokens", "2", "--compile", "eager")) == 0
    err = capsys.readouterr().err
    assert err.startswith("compiling the decoder (torch.compile, mode eager): the first answer waits for it")
    assert main(["-q", *_run(checkpoint, image, "--max-new-tokens", "2", "--compile", "eager")]) == 0
    assert capsys.readouterr().err == ""


def test_demo_status_goes_to_stderr_and_quiet_silences_it(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path / "d"), "--new-tokens", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote:" not in captured.out and "merged tokens" in captured.out
    assert (
        captured.err
        == "wrote: "
        + "  ".join(
            str(tmp_path / "d" / name)
            for name in ("demo_input.png", "demo_tiling.png", "demo_attention.png", "demo_video_tiling.png")
        )
        + "\n"
    )
    assert main(["-q", *argv]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and "merged tokens" in quiet.out


def test_inspect_writes_a_picture_only_when_asked(tmp_path, capsys, monkeypatch):
    image = _save_image(tmp_path / "in.png", 120, 90)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for flags in ([], ["--json"]):
        assert main(["inspect", str(image), *flags]) == 0
        captured = capsys.readouterr()
        assert captured.err == ""  # nothing written, nothing to say
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no <name>.tiling.png in the cwd
    report = json.loads(captured.out)
    assert report["png"] is None

    png = tmp_path / "tiling.png"
    assert main(["inspect", str(image), "--png", str(png), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["png"] == str(png) and captured.err == f"wrote: {png}\n"
    with Image.open(png) as picture:
        assert picture.width >= 120
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a file of mine")
    for flags in ([], ["--json"]):  # never over an existing file without --force, --json or not
        assert main(["inspect", str(image), "--png", str(mine), *flags]) == 1
        err = capsys.readouterr().err
        assert (
            err == f"error: --png {mine} already exists; pass --force to replace it, or choose another name\n"
        )
    assert mine.read_bytes() == b"a file of mine"
    assert main(["inspect", str(image), "--png", str(mine), "--force", "-q"]) == 0
    assert capsys.readouterr().err == ""
    with Image.open(mine) as picture:
        assert picture.format == "PNG"
    assert main(["inspect", str(image), "--png", str(tmp_path / "no" / "dir.png")]) == 1
    missing = tmp_path / "no"
    assert (
        capsys.readouterr().err
        == f"error: --png {missing / 'dir.png'}: the directory {missing} does not exist\n"
    )


@pytest.fixture(scope="module")
def released_processor(tmp_path_factory):
    """A checkpoint directory as published: Qwen2.5-VL-7B's config.json and preprocessor_config.json (its
    max_pixels 12845056, HF's class default being 1003520); inspect reads no weights."""
    from qwenvl_min import Config

    directory = tmp_path_factory.mktemp("Qwen2.5-VL-7B-Instruct")
    (directory / "config.json").write_text(json.dumps(Config.preset("qwen2.5-vl-7b").to_hf()))
    processor = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def test_inspect_model_uses_that_checkpoints_budget(tmp_path, capsys, released_processor):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (3024, 4032), (120, 160, 200)).save(photo, quality=50)  # a phone photo's size
    assert main(["inspect", str(photo), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["merged_tokens"] == 1230 and default["pixel_budget"] == [3136, 1003520]
    assert default["model"] is None and "library default" in default["budget_from"]
    assert main(["inspect", str(photo), "--json", "--model", str(released_processor)]) == 0
    released = json.loads(capsys.readouterr().out)
    assert released["merged_tokens"] == 15552 and released["pixel_budget"] == [3136, 12845056]
    assert released["budget_from"] == str(released_processor / "preprocessor_config.json")
    assert released["family"] == "qwen2.5-vl" and released["model"] == str(released_processor)
    assert main(["inspect", str(photo), "--model", str(released_processor)]) == 0
    text = capsys.readouterr().out
    assert "merged tokens     15552 " in text and f"budget from       {released_processor}" in text
    assert main(["inspect", str(photo), "--model", str(released_processor), "--family", "qwen2-vl"]) == 1
    assert "--family is for inspect without --model" in capsys.readouterr().err
    assert main(["inspect", str(photo), "--model", str(tmp_path / "nowhere")]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_inspect_help_says_which_budget_applies_without_model(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "without it the library default, min_pixels 3136 (56*56) .. max_pixels 1003520 (1280*28*28)" in text
    )
    assert "NOT what published checkpoints ship" in text and "12845056" in text
    assert "1230 tokens by default, 15552 with its --model" in text


DEFAULT_TEMPERATURE = re.compile(r"temperature.{0,300}generation_config\.json.{0,60}greedy", re.S)


def test_default_temperature_is_stated_one_way_and_holds(tmp_path, checkpoint, capsys):  # noqa: F811
    """README, the tour, docs/cli.md and `run --help` agree: the checkpoint's generation_config.json
    decides, greedy without one; and no page calls temperature 0 the default. The test checkpoint has no
    generation_config.json: different seeds give the same answer (greedy)."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: the checkpoint's generation_config.json decides; greedy when it has none)" in help_text
    root = Path(__file__).parents[2]
    for page in ("README.md", "docs/tour.md", "docs/cli.md"):
        text = " ".join((root / page).read_text().split())
        assert DEFAULT_TEMPERATURE.search(text), page
        assert not re.search(
            r"temperature 0 is (the )?default|default(s)? (to )?temperature 0", text, re.I
        ), page
    image = _save_image(tmp_path / "a.png", 56, 56)
    answers = set()
    for seed in ("1", "2", "3"):
        assert main(["-q", *_run(checkpoint, image, "--max-new-tokens", "6", "--seed", seed)]) == 0
        answers.add(capsys.readouterr().out)
    assert len(answers) == 1
