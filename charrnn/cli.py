"""`charrnn train | sample | score | perplexity | info | serve`.

Commands are thin: they turn options into library calls. Data goes to stdout, progress and
logs to stderr. Exit status: 0 success, 1 data or runtime error (one `Error:` line), 2 usage
error, 130 / 143 when SIGINT / SIGTERM stopped training after it saved.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

# NumPy-free modules only: NumPy and the model code are imported by the commands that run them,
# so that `--help`, `--version` and usage errors answer at once
from . import __version__
from .clitypes import CorpusPath, Duration, EscapedText, FiniteFloat, one_process_per_rank
from .config import (
    CELLS,
    DEVICES,
    LONG_LINE,
    LONG_WINDOW,
    MAX_WINDOW,
    NONLINEARITIES,
    SHORT_WINDOW,
    SMALL_TEXT_EVAL_EVERY,
    SMALL_TEXT_STEPS,
    UNKNOWN_POLICIES,
    WIDE_HIDDEN,
    ModelConfig,
    SampleOptions,
    ServeLimits,
    TrainConfig,
)
from .errors import CharRNNError
from .mpienv import launched_size

if TYPE_CHECKING:
    from .api import Model

EXISTING_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
UNKNOWN = click.option(
    "--unknown", type=click.Choice(UNKNOWN_POLICIES), default="error", show_default=True,
    help="What to do with characters the model never saw: stop with a list of them, or leave them out.",
)  # fmt: skip
CHECKPOINT = click.option(
    "-c", "--checkpoint", type=click.Path(exists=True, path_type=Path),
    help="A .npz checkpoint or a run directory (its best.npz). "
    "Default: the newest best.npz under checkpoints/.",
)  # fmt: skip

WORKERS = click.option(
    "--workers", type=click.IntRange(0, 1024), default=TrainConfig.workers,
    callback=one_process_per_rank,
    help="Processes sharing the streams, one BLAS thread each (0: one per CPU core, at most one "
    "per 8 streams; 1: none, the one process keeps NumPy's BLAS threads). Scoring uses them for "
    "texts of 100,000 characters or more.",
)  # fmt: skip

DEVICE = click.option(
    "--device", type=click.Choice(DEVICES), default="auto", show_default=True,
    help="Where to compute: gpu needs CuPy (pip install -e '.[gpu]'); auto uses a GPU when CuPy "
    "finds one, else the CPU. Checkpoints work on either.",
)  # fmt: skip


class CharRNNGroup(click.Group):
    """Turns anticipated failures into one `Error:` line and the documented exit status."""

    def invoke(self, ctx):
        try:
            # without an MPI launcher distributed.job only calls the command: skip its imports
            if launched_size() > 1:
                from . import distributed

                return distributed.job(super().invoke, ctx)
            return super().invoke(ctx)
        except CharRNNError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except MemoryError:
            click.echo(
                "Error: out of memory (try a smaller --batch-size, --hidden-size or --streams)", err=True
            )
            ctx.exit(1)
        except BrokenPipeError:
            # the reader (e.g. `head`) has gone: stop quietly, and keep Python's exit-time flush quiet too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except OSError as e:
            click.echo(f"Error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", err=True)
            ctx.exit(1)


@click.group(cls=CharRNNGroup, context_settings={"help_option_names": ["-h", "--help"]})
# the version as a literal: click would otherwise look it up with importlib.metadata, which takes
# longer to import than the rest of --version
@click.version_option(__version__)
def main() -> None:
    """Character-level RNN / LSTM / GRU language models: train, sample, score."""


def resolve_checkpoint(path: Path | None) -> Path:
    """-c's value, or the newest best.npz under checkpoints/ (said on stderr)."""
    if path is None:
        from .checkpoint import latest_checkpoint

        path = latest_checkpoint(Path("checkpoints"))
        if path is None:
            raise CharRNNError(
                "no checkpoint under checkpoints/: train one with `charrnn train FILE` or pass -c"
            )
        click.echo(f"using {path}", err=True)
    return path


def load_model(path: Path | None, device: str = "cpu") -> Model:
    from . import api

    return api.load(resolve_checkpoint(path), device)


def given(ctx: click.Context, names) -> dict:
    """The options among `names` that the user typed (the rest keep a checkpoint's values)."""
    return {n: ctx.params[n] for n in names if ctx.get_parameter_source(n) != ParameterSource.DEFAULT}


@main.command()
@click.argument("corpus", nargs=-1, required=True, type=CorpusPath())
@click.option("--model", "cell", type=click.Choice(CELLS), default=ModelConfig.cell, show_default=True)
@click.option(
    "--hidden-size", type=click.IntRange(1, 8192), default=ModelConfig.hidden_size,
    help=f"Default: {ModelConfig.hidden_size}, or {WIDE_HIDDEN} when --max-time lets a model that wide "
    "go over the text 6 or more times (the start-up line says which and why).",
)  # fmt: skip
@click.option(
    "--layers", "num_layers", type=click.IntRange(1, 16), default=ModelConfig.num_layers, show_default=True
)
@click.option(
    "--dropout",
    type=FiniteFloat(0, 1, hi_open=True),
    help="Default: 0.2 when the run's budget (--max-steps, --epochs, --max-time) allows 6 or more "
    "passes over the text, else 0 (the start-up line says which and why).",
)
@click.option(
    "--embedding-size",
    type=click.IntRange(0, 8192),
    help="0 feeds one-hot characters straight into layer 0. Default: 0 for vocabularies of up to "
    "256 characters, 64 for larger ones.",
)
@click.option("--peephole/--no-peephole", default=ModelConfig.peephole, help="LSTM peephole connections.")
@click.option(
    "--nonlinearity",
    type=click.Choice(NONLINEARITIES),
    default=ModelConfig.nonlinearity,
    show_default=True,
    help="Activation of the vanilla rnn cell.",
)
# 32 x 50 windows: 3.5 times the updates per second of 64 x 100 at 90% of the characters per
# second, which reaches a given validation loss in far less time (docs/RESULTS.md)
@click.option(
    "--seq-len",
    type=click.IntRange(1, 100_000),
    help=f"Characters per window (truncated BPTT). Default: {SHORT_WINDOW}, or {LONG_WINDOW} for text with "
    f"many lines longer than {LONG_LINE} chars (code), so a window spans a line.",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 65_536), default=TrainConfig.batch_size, show_default=True
)
@click.option(
    "--val-frac",
    type=FiniteFloat(0, 0.5),
    default=TrainConfig.val_frac,
    show_default=True,
    help="Fraction at the end of the text kept for validation.",
)
@click.option("--lr", type=FiniteFloat(0, 1, lo_open=True), default=TrainConfig.lr, show_default=True)
@click.option(
    "--lr-decay",
    type=FiniteFloat(0, 1, lo_open=True),
    default=TrainConfig.lr_decay,
    show_default=True,
    help="Multiply the learning rate by this every --lr-decay-every steps.",
)
@click.option(
    "--lr-decay-every", type=click.IntRange(0), default=TrainConfig.lr_decay_every, show_default=True
)
@click.option(
    "--plateau-patience",
    type=click.IntRange(0),
    default=TrainConfig.plateau_patience,
    show_default=True,
    help="Scale the learning rate by --plateau-factor after this many evaluations without a new "
    "best (0: off).",
)
@click.option(
    "--plateau-factor",
    type=FiniteFloat(0, 1, lo_open=True, hi_open=True),
    default=TrainConfig.plateau_factor,
    show_default=True,
)
@click.option(
    "--warmdown",
    type=FiniteFloat(0, 1),
    default=TrainConfig.warmdown,
    show_default=True,
    help="Let the learning rate fall linearly to 0 over this last fraction of the run's "
    "--max-steps, --epochs or --max-time, whichever ends it first (0: off).",
)
@click.option(
    "--grad-clip",
    type=FiniteFloat(0),
    default=TrainConfig.grad_clip,
    show_default=True,
    help="Global gradient norm limit (0: off).",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=TrainConfig.seed, show_default=True)
@click.option(
    "--epochs",
    type=FiniteFloat(0, 1e6),
    help=f"Stop after this many passes over the training text (0: no limit). Default: "
    f"{TrainConfig.epochs:g}, or on a small text as many as {SMALL_TEXT_STEPS:,} steps take; no limit "
    "when --max-steps or --max-time is given.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(0),
    default=TrainConfig.max_steps,
    help="Stop after this many steps in total (0: no limit).",
)
@click.option(
    "--max-time",
    type=Duration(),
    default=TrainConfig.max_time,
    help="Stop after this long, e.g. 90s, 20m, 2h (0: no limit).",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=TrainConfig.patience,
    show_default=True,
    help="Stop after this many evaluations without a new best validation loss (0: never).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(1),
    default=TrainConfig.eval_every,
    help=f"Evaluate every this many steps. Default: {TrainConfig.eval_every}, or "
    f"{SMALL_TEXT_EVAL_EVERY} on a small text given more epochs (see --epochs).",
)
@click.option(
    "--eval-chars",
    type=click.IntRange(0),
    default=TrainConfig.eval_chars,
    help="Validate on a fixed sample of about this many held-out characters, spread over the whole "
    "validation text and the same at every evaluation, so that validation costs the same at any "
    "corpus size (0: all of them).",
    show_default=True,
)
@click.option("--save-every", type=click.IntRange(0), default=TrainConfig.save_every, show_default=True)
@WORKERS
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: checkpoints/<corpus name>/).",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in the output directory exactly where it stopped."
)
@click.option("--init-from", type=EXISTING_FILE, help="Start from this checkpoint's weights (fine-tuning).")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option(
    "--errors", type=click.Choice(["strict", "replace", "ignore"]), default="strict", show_default=True
)
@click.option("--newline", type=click.Choice(["normalize", "keep"]), default="normalize", show_default=True)
@click.option(
    "--unknown",
    type=click.Choice(UNKNOWN_POLICIES),
    default="error",
    show_default=True,
    help="With --init-from: characters of the corpus that the checkpoint does not know.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@DEVICE
@click.pass_context
def train(ctx, corpus, output, resume, init_from, unknown, quiet, device, **_):
    """Train a model on text files, directories of them or quoted glob patterns (e.g. 'books/*.txt'),
    joined in order; a newline is added after a file that does not end with one."""
    if resume and init_from:
        raise click.UsageError("--resume and --init-from exclude each other")
    from . import api

    # only the options typed: the rest take the defaults, or on --resume the checkpoint's values
    options = given(ctx, api.MODEL_OPTIONS + api.TRAIN_OPTIONS + api.POLICY_OPTIONS)
    if not (resume or init_from):  # those take the cell from the checkpoint, and refuse another
        cell = options.get("cell", ModelConfig.cell)
        for name, value, cell_of_it in (("peephole", True, "lstm"), ("nonlinearity", "relu", "rnn")):
            if options.get(name) == value and cell != cell_of_it:
                raise click.UsageError(f"--{name} applies only to --model {cell_of_it}, not {cell}")
    result = api.train(
        corpus,
        output,
        resume=resume,
        init_from=init_from,
        unknown=unknown,
        device=device,
        show_progress=False if quiet else None,
        **options,
    )
    if result.signal:
        ctx.exit(128 + result.signal)


@main.command()
@CHECKPOINT
@click.option(
    "-n", "--length", type=click.IntRange(0, 10_000_000), default=SampleOptions.length, show_default=True
)
@click.option(
    "-t",
    "--temperature",
    type=FiniteFloat(0, 100),
    default=SampleOptions.temperature,
    show_default=True,
    help="0: greedy.",
)
@click.option("--greedy", is_flag=True, help="Always take the most likely character (same as -t 0).")
@click.option(
    "--top-k", type=click.IntRange(0), default=0, help="Sample among the k most likely characters (0: all)."
)
@click.option("--top-p", type=FiniteFloat(0, 1, lo_open=True), default=1.0, help="Nucleus sampling mass.")
@click.option("-p", "--prime", default="", help="Text to start from (printed first).")
@click.option(
    "--prime-file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="Read the prime from a file (- for stdin), in the checkpoint's encoding.",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Same seed, same text.")
@click.option("--num-samples", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option(
    "--stop",
    type=EscapedText(),
    default="",
    help="Stop a sample once it has written this string (\\n: newline).",
)
@click.option(
    "--repeat-penalty",
    type=FiniteFloat(1, 10),
    default=SampleOptions.repeat_penalty,
    show_default=True,
    help="Make the characters of the last --repeat-window less likely, as llama.cpp's "
    "--repeat-penalty does (1: off).",
)
@click.option(
    "--repeat-window",
    type=click.IntRange(1, MAX_WINDOW),
    default=SampleOptions.repeat_window,
    show_default=True,
)
@click.option(
    "--dry-multiplier",
    type=FiniteFloat(0, 100),
    default=SampleOptions.dry_multiplier,
    show_default=True,
    help="llama.cpp's DRY: a character that would make the line repeat, within the last --dry-window, "
    "a stretch of --dry-allowed-length or more characters loses multiplier * base^(excess) from its "
    "logit (0: off; 0.8 stops endless runs of spaces and looping lines).",
)
@click.option("--dry-base", type=FiniteFloat(1, 10), default=SampleOptions.dry_base, show_default=True)
@click.option(
    "--dry-allowed-length",
    type=click.IntRange(1, 100_000),
    default=SampleOptions.dry_allowed_length,
    show_default=True,
)
@click.option(
    "--dry-window", type=click.IntRange(1, MAX_WINDOW), default=SampleOptions.dry_window, show_default=True
)
@UNKNOWN
@DEVICE
def sample(checkpoint, temperature, greedy, prime, prime_file, num_samples, device, **options):
    """Write new text in the style of the training corpus (streams to stdout)."""
    model = load_model(checkpoint, device)
    if prime_file is not None:
        prime = read_stdin() if str(prime_file) == "-" else model.read_file(prime_file)
    options["temperature"] = 0.0 if greedy else temperature
    if num_samples == 1:
        for piece in model.stream(prime, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n\n".join(model.generate_many(num_samples, prime, **options)) + "\n")


def read_stdin() -> str:
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as e:
        raise CharRNNError(f"standard input is not {e.encoding}: {e.reason} at byte {e.start}") from None


def _scores(model: Model, files, exact, streams, unknown, workers):
    return [model.score_file(f, exact, streams, unknown, workers, show_progress=None) for f in files]


def _show_surprisal(model: Model, files, unknown, html_file: Path | None) -> None:
    """Each file coloured by surprisal: on stdout, or as one HTML page written to html_file."""
    from .scoring import render_surprisal, surprisal_legend, surprisal_score

    views = []
    for f in files:
        text = model.read_file(f)
        nats = model.surprisal(text, unknown)
        if html_file is None:
            # colour is the whole point of this view, so it stays on when piped (e.g. into less -R)
            click.echo(render_surprisal(text, nats), color=True)
        else:
            known = model.known(text)
            views.append((surprisal_score(str(f), nats, known), text, nats, known))
    if html_file is None:
        click.echo(surprisal_legend(), err=True, color=True)
        return
    from .surprisal_html import surprisal_page

    html_file.write_text(surprisal_page(views, str(model.path)), encoding="utf-8")
    click.echo(f"wrote {html_file}", err=True)


STREAMS = click.option(
    "--streams",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Parallel streams (speed); see --exact.",
)
EXACT = click.option("--exact", is_flag=True, help="One stream over the whole text: the model's exact value.")


@main.command()
@click.argument("files", nargs=-1, required=True, type=EXISTING_FILE)
@CHECKPOINT
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (per line with --per-line).")
@click.option("--per-line", is_flag=True, help="Score each line on its own.")
@click.option("--surprisal", "show_surprisal", is_flag=True, help="Print the text coloured by surprise.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the --surprisal view of the files as one self-contained HTML page instead.",
)
@EXACT
@STREAMS
@UNKNOWN
@WORKERS
@DEVICE
def score(
    files, checkpoint, as_json, per_line, show_surprisal, html_file, exact, streams, unknown, workers, device
):
    """How well the model predicts each file: nats/char, bits/char, perplexity."""
    model = load_model(checkpoint, device)
    if show_surprisal or html_file:
        _show_surprisal(model, files, unknown, html_file)
        return
    if per_line:
        results = [s for f in files for s in model.score_lines(model.read_file(f), unknown, name=str(f))]
    else:
        results = _scores(model, files, exact, streams, unknown, workers)
    if as_json:
        for r in results:
            click.echo(json.dumps(r.to_dict()))
        return
    click.echo(f"{'file':<40} {'chars':>10} {'nats/char':>10} {'bits/char':>10} {'perplexity':>11}")
    for r in results:
        d = r.to_dict()
        click.echo(
            f"{d['name']:<40} {d['chars']:>10,} {d['nats_per_char']:>10.4f} "
            f"{d['bits_per_char']:>10.4f} {d['perplexity']:>11.4f}"
        )
        if r.skipped:
            click.echo(f"{r.name}: {r.skipped:,} unknown character(s) skipped", err=True)


@main.command()
@click.argument("files", nargs=-1, required=True, type=EXISTING_FILE)
@CHECKPOINT
@click.option("--json", "as_json", is_flag=True)
@EXACT
@STREAMS
@UNKNOWN
@WORKERS
@DEVICE
def perplexity(files, checkpoint, as_json, exact, streams, unknown, workers, device):
    """Print only the perplexity of each file, one per line."""
    for r in _scores(load_model(checkpoint, device), files, exact, streams, unknown, workers):
        d = r.to_dict()
        click.echo(
            json.dumps({"file": r.name, "perplexity": d["perplexity"]})
            if as_json
            else f"{d['perplexity']:.6g}"
        )


@main.command()
@click.argument("corpus", nargs=-1, required=True, type=CorpusPath())
@click.option("--budget", type=Duration(), default="1h", show_default=True, help="Total time, e.g. 30m, 2h.")
@click.option(
    "--trial-time",
    type=Duration(),
    help="Longest time one trial trains (default: a sixth of the budget, at most 20m).",
)
@click.option(
    "--min-trial-time", type=Duration(), default=60.0, show_default=True, help="First pruning point."
)
@click.option(
    "--trials",
    type=click.IntRange(0),
    default=0,
    help="Stop after this many trials in the study (0: budget).",
)
@click.option(
    "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Trials at once on this machine."
)
@click.option(
    "--storage",
    default="",
    help="Optuna storage URL shared by several machines (default: a journal file in -o).",
)
@click.option("--study", default="charrnn", show_default=True, help="Study name within the storage.")
@click.option("--space", "space_file", type=EXISTING_FILE, help="JSON narrowing the search space.")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Default: checkpoints/tune-<corpus>/.",
)
@click.option("--join", is_flag=True, hidden=True)
@click.option("--deadline", type=float, hidden=True)
@click.pass_context
def tune(
    ctx,
    corpus,
    budget,
    trial_time,
    min_trial_time,
    trials,
    jobs,
    storage,
    study,
    space_file,
    output,
    join,
    deadline,
):
    """Search cell, size, dropout, learning rate and windows within a time budget (Optuna)."""
    from . import tune as tuning
    from .data import expand_paths

    paths = expand_paths(corpus)
    options = tuning.TuneOptions(
        paths=tuple(map(str, paths)),
        out_dir=str(output or Path("checkpoints") / f"tune-{paths[0].stem}"),
        deadline=deadline or time.time() + budget,
        trial_seconds=trial_time or min(budget / 6, 1200.0),
        min_trial_seconds=min_trial_time,
        trials=trials,
        jobs=jobs,
        storage=storage,
        study=study,
        space_file=str(space_file or ""),
    )
    signum = (tuning.optimize if join else tuning.tune)(options)
    if not join:
        click.echo(tuning.results_table(options))
        click.echo(f"best trial's checkpoints: {Path(options.out_dir) / 'best'}", err=True)
    if signum:
        ctx.exit(128 + signum)


@main.command()
@click.argument(
    "runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The picture to write: .png, .svg or .pdf.",
)
def plot(runs, output):
    """Draw the learning curves of training runs (their metrics.jsonl): training and validation
    loss against steps and against training time, the runs overlaid (needs matplotlib)."""
    from . import plot as plotting

    if output.suffix.lower() not in plotting.FORMATS:
        raise click.BadParameter(f"{output} is not one of {', '.join(plotting.FORMATS)}", param_hint="-o")
    plotting.plot_runs(list(runs), output)
    click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def info(checkpoint, as_json):
    """Describe a checkpoint: model, vocabulary, training progress, format."""
    desc = load_model(checkpoint).info()
    if as_json:
        click.echo(json.dumps(desc, indent=2))
        return
    for key, value in desc.items():
        click.echo(f"{key:<16} {value}")


@main.command()
@CHECKPOINT
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on: the loopback interface by default, 0.0.0.0 for every interface.",
)
@click.option("--port", type=click.IntRange(0, 65_535), default=8000, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(0, 256),
    default=0,
    help="Threads that run the model (0: one per CPU core).",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1, 4096),
    default=ServeLimits.max_concurrent,
    show_default=True,
    help="Generations and scores in flight; one more gets 503 at once.",
)
@click.option(
    "--max-length",
    type=click.IntRange(1, 10_000_000),
    default=ServeLimits.max_length,
    show_default=True,
    help="Most new characters one sample may ask for.",
)
def serve(checkpoint, host, port, threads, max_concurrent, max_length):
    """Serve the model over HTTP: POST /v1/sample, /v1/score, GET /v1/model, /health, and a page
    to try it at / (needs the serve extra: Starlette and uvicorn)."""
    try:
        from . import serve as serving
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if missing not in ("starlette", "uvicorn"):
            raise
        raise CharRNNError(f"charrnn serve needs {missing}: pip install -e '.[serve]'") from None
    from .parallel import available_cpus

    limits = ServeLimits(max_concurrent=max_concurrent, max_length=max_length)
    serving.run(load_model(checkpoint), host, port, limits, threads or available_cpus())
