"""`qwenvl-min latents`: chosen taps for many inputs, as one .safetensors file per input or WebDataset shards.

The library does the work (`qwenvl_min.latents`: prepare, pack, extract, store; docs/latents.md); this
command adds what a run over a dataset needs:
- Inputs: files and directories (walked recursively, images and videos by suffix) and `--files-from LIST`
  (one path or URL a line, `-` for stdin); two inputs with the same output name are refused first.
- Workers: `--workers W` processes decode, sample, resize and patchify ahead of the model, at most
  W x 2 prepared inputs waiting (`qwenvl_min.inputs.pipeline`); a worker that dies stops the run with one
  line (what was written stays, the next run resumes).
- Packing: inputs share a forward up to `--batch-tokens` patch rows and `--batch-size` inputs.
- Resumable: an existing output is skipped only if it was made with the same settings (`latents.records`);
  anything else there is reported as a failure and left untouched: never mixed into the results, never
  deleted.
- Atomic: files and shards are written to temporary names and renamed (permissions from the umask); a
  SIGTERM or Ctrl-C removes the temporary file (a shard keeps its whole samples), and temporary files a
  SIGKILL left are removed by the next run.
- Exclusive: a lock file in OUT stops a second run writing into the same directory. An OUT this run
  created is removed again if nothing was written into it.
- A bad input (unreadable, over the budget, a decompression bomb) is reported and skipped; a full disk
  or a read-only OUT stops the run with one error line. Exit status 1 if anything failed.
- Data parallel: launched by torchrun (`torchrun --nproc-per-node N -m qwenvl_min latents ...`), each
  rank loads the model on its device, takes every N-th input (`cli.distributed.share`) and runs its own
  workers and packs; rank 0 holds the lock and prints one summary for all ranks. Outputs are those of a
  one-process run (WebDataset shards are per rank: shard-<rank>-<index>.tar). A failed input on one rank
  does not stop the others; a fatal error on one rank stops all of them at the end. When inputs failed,
  only rank 0 exits 1, and it hands the summary to torchrun (its error file), so torchrun's closing
  report ends with the summary instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..inputs.input_lists import InputSource, duplicate_names, expand_inputs, read_list
from ..inputs.pipeline import DEFAULT_PREFETCH, Failed, prepared_in_order, worker_death
from ..interp.taps import TapError, Taps
from ..latents.extract import DEFAULT_BATCH_SIZE, LAYOUTS, extract_latents
from ..latents.packing import ACCELERATOR_BATCH_TOKENS
from ..latents.prepare import InputPreparer, Recipe
from ..latents.records import (
    FATAL_WRITE_ERRORS,
    SafetensorsFiles,
    input_settings,
    record_metadata,
    run_settings,
    stored_tensors,
)
from ..latents.shards import ShardError, WebDatasetShards, sample_key
from ..parallel.launch import DistContext, init_distributed, launched_distributed
from ..utils.fs import ExclusiveLock, LockedError
from ..utils.progress import progress_bar
from .distributed import all_gather_objects, share
from .options import add_model, add_pixel_budget
from .support import CliError, load_model

log = logging.getLogger(__name__)
LOCK_NAME = ".latents.lock"
FORMATS = ("safetensors", "webdataset")
DEFAULT_WORKERS = 2
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 512 * 2**20, '4096' -> 4096 (bytes)."""
    match = _SIZE.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 1GB, 500MB or 512MiB, got {text!r}")
    power = "kmgt".find(match.group(2).lower()) + 1
    return max(1, int(float(match.group(1)) * (1024 if match.group(3) else 1000) ** power))


def register(sub: argparse._SubParsersAction) -> None:
    latents = sub.add_parser(
        "latents", help="save chosen taps for many inputs: one .safetensors each, or WebDataset shards"
    )
    add_model(latents)
    latents.add_argument(
        "--taps", required=True, help="comma-separated tap names, e.g. visual.merger.input,text.layers.3"
    )
    latents.add_argument("--out", required=True, help="output directory (existing outputs are skipped)")
    latents.add_argument(
        "inputs", nargs="*", help="image / video files, and directories (walked recursively, by suffix)"
    )
    latents.add_argument(
        "--files-from", metavar="LIST", help="a file with one input path or URL a line; - reads stdin"
    )
    latents.add_argument(
        "--format",
        choices=FORMATS,
        default="safetensors",
        help="safetensors: OUT/<name>.safetensors per input (default); webdataset: tar shards "
        "OUT/shard-<rank>-<index>.tar of <key>.safetensors + <key>.json samples",
    )
    latents.add_argument(
        "--shard-size",
        type=parse_size,
        default=parse_size("1GB"),
        metavar="SIZE",
        help="webdataset: bytes per shard at most, e.g. 500MB or 1GiB (default 1GB; one larger sample gets "
        "a shard of its own)",
    )
    latents.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="rows",
        help="rows: tower taps as patch rows (N, D) / merged tokens (M, E) in the model's row order "
        "(default); grid: in image order, (T, H, W, D) and (T, H/merge, W/merge, E)",
    )
    latents.add_argument(
        "--prompt",
        default=None,
        help="text after the image / video in the user turn of the checkpoint's chat template (needs its "
        "tokenizer); default: the vision block alone, <|vision_start|> pads <|vision_end|>",
    )
    latents.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"processes that decode and resize inputs ahead of the model, at most {DEFAULT_PREFETCH} "
        f"prepared inputs waiting per worker; 0 prepares in the main process (default {DEFAULT_WORKERS}, "
        "per rank under torchrun)",
    )
    latents.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="patch rows per forward at most; with decoder taps every input counts as the pack's largest "
        f"(default {ACCELERATOR_BATCH_TOKENS} on a GPU; on a CPU as many as keep the tower's widest "
        "activation under 32 MiB, where larger packs get slower: 2184 for the Qwen2.5-VL-7B tower in fp32; one larger "
        "input runs alone)",
    )
    latents.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"inputs per forward at most (default {DEFAULT_BATCH_SIZE}; 1: one input per forward)",
    )
    latents.add_argument("--no-progress", action="store_true", help="no progress bar")
    latents.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_pixel_budget(latents)
    latents.set_defaults(func=cmd_latents)


def _sources(args: argparse.Namespace) -> list[InputSource]:
    listed: list[str] = []
    if args.files_from == "-":
        listed = read_list(sys.stdin)
    elif args.files_from is not None:
        try:
            with open(args.files_from) as stream:
                listed = read_list(stream)
        except OSError as err:
            raise CliError(f"cannot read --files-from {args.files_from}: {err.strerror or err}") from None
    sources = expand_inputs(args.inputs, listed)
    if not sources:
        raise CliError("no inputs: give image / video files, directories, or --files-from LIST")
    return sources


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--workers", args.workers, 0), ("--batch-tokens", args.batch_tokens, 1)):
        if value is not None and value < low:
            raise CliError(f"{flag} must be >= {low}, got {value}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.files_from == "-" and launched_distributed():
        raise CliError("--files-from - under torchrun: every rank reads the whole list, so give it a file")
    if args.prompt is not None and not args.prompt.strip():
        raise CliError("--prompt is empty; give the text, or leave --prompt out for the vision block alone")


def cmd_latents(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.taps.split(",") if n.strip()]
    if not names:
        raise CliError("--taps is empty; name at least one tap, e.g. visual.merger.input,text.layers.0")
    _check_args(args)
    sources = _sources(args)
    output_name = sample_key if args.format == "webdataset" else str
    if clash := duplicate_names([output_name(s.name) for s in sources]):
        shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
        raise CliError(
            f"several inputs would write the output name(s) {shown}; outputs are named after the input's "
            "stem (or its path inside a directory given): rename or split the inputs"
        )
    context = None
    device = args.device
    if launched_distributed():  # data parallel: each rank a whole model, its share of the inputs
        context = init_distributed(args.device)
        device = str(context.device)
    model = load_model(args.model, args.dtype, device, args.verify)
    try:
        Taps(model, read=names)  # check the names before any work
    except TapError as err:
        raise CliError(err.args[0]) from err
    recipe = Recipe(
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_vision_tokens=args.max_vision_tokens,
        fps=args.fps,
        num_frames=args.num_frames,
        max_frames=args.max_frames,
        total_pixels=args.total_pixels,
        prompt=args.prompt,
    )
    try:
        preparer = InputPreparer(model.config, model.checkpoint_dir, recipe)
    except FileNotFoundError as err:
        raise CliError(f"--prompt needs the checkpoint's tokenizer: {err}") from err
    out = Path(args.out)
    main_rank = context is None or context.is_main
    lock, problem, created = None, None, []
    if main_rank:
        lock, problem, created = _lock(out, args.format)
    if context is not None:  # every rank stops if rank 0 could not take the lock
        problem = all_gather_objects(problem if context.is_main else None)[0]
    if problem:
        raise CliError(problem)
    run = _Run(args, model, names, recipe, preparer, out, context)
    results: list[Result] = []
    try:
        if context is None:
            results = [run.safely(sources)]
        else:
            dist.barrier()  # rank 0 has cleaned stale temporary files before anyone writes
            results = all_gather_objects(run.safely(share(sources, context)))
    finally:
        if lock is not None:
            lock.release()
            _remove_if_empty(created)  # an OUT this run made and wrote nothing into
    if not main_rank:  # rank 0 reports (and exits 1) for failed inputs; a fatal error stops every rank
        _raise_fatal(results)
        return 0
    code = _summarize(out, results, args.json)
    if code and context is not None:
        _hand_summary_to_torchrun(out, results)
    return code


def _lock(out: Path, form: str) -> tuple[ExclusiveLock | None, str | None, list[Path]]:
    """Take OUT's lock and remove stale temporary files: (lock, None, the folders this made) or
    (None, why not, [])."""
    created = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = ExclusiveLock(out / LOCK_NAME)
        lock.acquire()
    except LockedError as err:
        return (
            None,
            (
                f"another `latents` run is writing into {out} ({err.strerror}); wait for it or choose another --out"
            ),
            [],
        )
    except OSError as err:
        _remove_if_empty(created)
        return None, f"cannot write into {out}: {err.strerror or err}; choose another --out", []
    (WebDatasetShards(out) if form == "webdataset" else SafetensorsFiles(out)).clean_stale()
    return lock, None, created


def _remove_if_empty(created: list[Path]) -> None:
    """Folders this run made (innermost first), if nothing was written into them."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


Result = tuple[int, int, list[tuple[str, str]], str | None]  # written, skipped, failed, fatal error


def _raise_fatal(results: list[Result]) -> None:
    fatal = [r[3] for r in results if r[3]]
    if fatal:
        raise CliError(fatal[0])


def _summarize(out: Path, results: list[Result], as_json: bool = False) -> int:
    """One summary for all ranks (a line, then every failure; or one JSON object, schema in docs/cli.md);
    raises the first fatal error."""
    written, skipped = sum(r[0] for r in results), sum(r[1] for r in results)
    failed = [f for r in results for f in r[2]]
    if as_json:
        fatal = next((r[3] for r in results if r[3]), None)
        summary = {
            "out": str(out),
            "written": written,
            "skipped": skipped,
            "failed": [{"input": path, "error": why} for path, why in failed],
            "ranks": len(results),
            "fatal": fatal,
        }
        print(json.dumps(summary), flush=True)
    else:
        print(_summary_text(out, results), flush=True)
    _raise_fatal(results)
    return 1 if failed else 0


def _summary_text(out: Path, results: list[Result]) -> str:
    written, skipped = sum(r[0] for r in results), sum(r[1] for r in results)
    failed = [f for r in results for f in r[2]]
    ranks = f" on {len(results)} ranks" if len(results) > 1 else ""
    lines = [f"latents: {written} written, {skipped} skipped (already in {out}), {len(failed)} failed{ranks}"]
    return "\n".join(lines + [f"  failed {path}: {why}" for path, why in failed])


def _hand_summary_to_torchrun(out: Path, results: list[Result]) -> None:
    """torchrun prints a report of every rank that exited non-zero, after everything the ranks printed;
    its last section shows the failed rank's error file, which we fill with the summary (the format of
    torch.distributed.elastic's `record`)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    text = _summary_text(out, results)
    message = {"message": text, "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))}}
    try:
        with open(path, "w") as file:
            json.dump({"message": message}, file)
    except OSError as err:
        log.debug("could not write torchrun's error file %s: %s", path, err)


class _Run:
    """One rank's share of the inputs: resume checks, the worker pipeline, packed extraction, writes."""

    def __init__(
        self,
        args: argparse.Namespace,
        model: Any,
        names: list[str],
        recipe: Recipe,
        preparer: InputPreparer,
        out: Path,
        context: DistContext | None,
    ) -> None:
        self.args, self.model, self.names, self.preparer, self.out = args, model, names, preparer, out
        self.settings = run_settings(model, names, recipe, args.layout, args.dtype)
        self.progress = context is None or context.is_main
        rank = 0 if context is None else context.rank
        self.output = (
            WebDatasetShards(out, args.shard_size, rank)
            if args.format == "webdataset"
            else SafetensorsFiles(out)
        )

    def safely(self, sources: list[InputSource]) -> Result:
        """`run`, with a CliError turned into the fatal part of the result (ranks stop together at the end)."""
        try:
            return self.run(sources)
        except CliError as err:
            return (0, 0, [], str(err))

    def run(self, sources: list[InputSource]) -> Result:
        skipped, failed, todo = 0, [], []
        try:
            for source in sources:
                why = self.output.problem(source.name, input_settings(self.settings, source.is_video))
                if why is None:
                    skipped += 1
                elif why is False:
                    todo.append(source)
                else:
                    failed.append((source.location, why))
        except ShardError as err:
            raise CliError(str(err)) from None
        location = {s.name: s.location for s in todo}
        written = 0
        # on a terminal only, and not with -q (qwenvl_min.utils.progress); never on the other ranks
        enabled = False if self.args.no_progress or not self.progress else None
        bar = progress_bar(total=len(todo), unit="input", enabled=enabled)
        try:
            for result in self._extracted(todo, failed):
                if isinstance(result, Failed):
                    failed.append((location[result.source.name], result.error))
                    log.warning("failed: %s: %s", location[result.source.name], result.error)
                else:
                    item, values = result
                    metadata = record_metadata(self.model, item, self.names, self.settings)
                    if self._write(item.name, stored_tensors(values), metadata, written, failed, location):
                        written += 1
                bar.update(1)
        except RuntimeError as err:
            if (why := worker_death(err)) is None:
                raise
            raise CliError(
                f"{why}; {written} written before it, nothing partial left: rerun to resume"
            ) from None
        finally:
            bar.close()
            self.output.close()
        return written, skipped, failed, None

    def _extracted(self, todo: list[InputSource], failed: list[tuple[str, str]]) -> Any:
        cuda = self.model.text.embed_tokens.weight.device.type == "cuda"
        prepared = prepared_in_order(todo, self.preparer, workers=self.args.workers, pin_memory=cuda)

        def good() -> Any:
            for result in prepared:
                if isinstance(result, Failed):
                    failed.append((result.source.location, result.error))
                    log.warning("failed: %s: %s", result.source.location, result.error)
                else:
                    yield result

        return extract_latents(
            self.model,
            good(),
            self.names,
            batch_tokens=self.args.batch_tokens,
            batch_size=self.args.batch_size,
            layout=self.args.layout,
            errors="skip",
        )

    def _write(
        self,
        name: str,
        tensors: Any,
        metadata: dict[str, Any],
        written: int,
        failed: list[tuple[str, str]],
        location: dict[str, str],
    ) -> bool:
        """Write one output; a full disk or read-only OUT stops the run, another OSError fails this input."""
        try:
            self.output.write(name, tensors, metadata)
        except OSError as err:
            if err.errno in FATAL_WRITE_ERRORS:
                raise CliError(
                    f"writing {name} into {self.out} failed: {err.strerror}; free space in {self.out} (or make "
                    f"it writable) and rerun to resume ({written} written before it, nothing partial left)"
                ) from None
            failed.append((location[name], f"{type(err).__name__}: {err}"))
            return False
        return True
