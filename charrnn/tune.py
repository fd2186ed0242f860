"""`charrnn tune`: search model and training settings within a time budget, on Optuna.

Each trial is an ordinary `charrnn train` run in its own directory (`trial-<n>/` under the
study's directory) with a time limit; its evaluations are reported to Optuna keyed by elapsed
seconds, so the asynchronous successive-halving pruner compares trials at equal training
time (trials of different batch sizes and model widths take steps of very different length)
and stops those clearly behind at 1, 3, 9, ... times `min_trial_seconds`. The value of a trial
is its best validation loss in nats/char.

Parallel and distributed: every process that runs `optimize` against the same storage and
study name joins the same study. `jobs` > 1 starts jobs - 1 more processes on this machine
(each trial then trains with cpus // jobs worker processes); the default storage is an Optuna
journal file in the study's directory, which processes on one machine share safely through
file locks. Processes on other machines join with `--storage` naming a shared database (e.g.
postgresql://user@host/db) and the same `--study`. A second `charrnn tune` on the same
directory or storage continues the study. Optuna is imported only here (extra `.[tune]`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .errors import CharRNNError
from .parallel import available_cpus
from .prepare import prepare_run
from .text import TextPolicy

INSTALL = "pip install -e '.[tune]'"  # or: pip install optuna

# name -> ("categorical", choices) | ("float", lo, hi, log) ; narrowed with --space FILE.json
SEARCH_SPACE: dict[str, tuple] = {
    "cell": ("categorical", ["lstm", "gru"]),
    "hidden_size": ("categorical", [128, 256, 384, 512]),
    "num_layers": ("categorical", [1, 2, 3]),
    "dropout": ("float", 0.0, 0.5, False),
    "lr": ("float", 5e-4, 1e-2, True),
    "seq_len": ("categorical", [50, 100, 150]),
    "batch_size": ("categorical", [16, 32, 64]),
}
MODEL_KEYS = ("cell", "hidden_size", "num_layers", "dropout")
STUDY_FILE = "study.journal"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise CharRNNError(f"charrnn tune needs Optuna, an optional extra: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class TuneOptions:
    """One study's settings; `deadline` is a time.time() shared by every local process."""

    paths: tuple[str, ...]
    out_dir: str
    deadline: float
    trial_seconds: float
    min_trial_seconds: float = 60.0
    trials: int = 0  # 0: as many as the budget allows
    jobs: int = 1
    storage: str = ""
    study: str = "charrnn"
    space_file: str = ""  # JSON narrowing SEARCH_SPACE (load_space)

    def search_space(self) -> dict[str, tuple]:
        return {**SEARCH_SPACE, **(load_space(self.space_file) if self.space_file else {})}


def load_space(path) -> dict[str, tuple]:
    """A JSON object of name -> [choices] (or {"low", "high", "log"}) for some SEARCH_SPACE
    names, e.g. {"cell": ["gru"], "hidden_size": [64, 128]}."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CharRNNError(f"cannot read the search space {path}: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise CharRNNError(f"{path}: the search space must be a non-empty JSON object")
    space = {}
    for name, value in raw.items():
        if name not in SEARCH_SPACE:
            raise CharRNNError(f"{path}: unknown setting {name!r} (known: {', '.join(SEARCH_SPACE)})")
        if isinstance(value, list) and value:
            space[name] = ("categorical", value)
        elif isinstance(value, dict) and {"low", "high"} <= set(value):
            space[name] = ("float", float(value["low"]), float(value["high"]), bool(value.get("log")))
        else:
            raise CharRNNError(f"{path}: {name} must be a list of choices or {{low, high, log}}")
    return space


def storage_for(options: TuneOptions):
    optuna = _optuna()
    if options.storage:
        return options.storage
    path = os.path.join(options.out_dir, STUDY_FILE)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def open_study(options: TuneOptions):
    optuna = _optuna()
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=int(options.min_trial_seconds), reduction_factor=3
    )
    try:
        return optuna.create_study(
            storage=storage_for(options),
            study_name=options.study,
            direction="minimize",
            pruner=pruner,
            load_if_exists=True,
        )
    except Exception as e:  # a storage URL that does not connect, a missing database driver
        raise CharRNNError(f"cannot open the study {options.study!r}: {e}") from None


def suggest(trial, space: dict[str, tuple]) -> dict:
    params = {}
    for name, spec in space.items():
        if spec[0] == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec[1]))
        else:
            params[name] = trial.suggest_float(name, spec[1], spec[2], log=spec[3])
    return params


def run_trial(trial, options: TuneOptions, stop: dict) -> float:
    """Train one suggested configuration until its time is up or the pruner stops it."""
    optuna = _optuna()
    trial.set_user_attr("process", f"{os.uname().nodename}:{os.getpid()}")
    seconds = min(options.trial_seconds, options.deadline - time.time())
    if seconds < options.min_trial_seconds / 2:  # another process's trial took the last minutes
        trial.study.stop()
        raise optuna.TrialPruned("the budget is spent")
    params = suggest(trial, options.search_space())
    model = {k: params[k] for k in MODEL_KEYS if k in params}
    training = TrainConfig(
        **{k: params[k] for k in ("lr", "seq_len", "batch_size") if k in params},
        seed=trial.number,
        max_time=seconds,
        epochs=0,
        patience=0,
        eval_every=200,
        workers=max(1, available_cpus() // options.jobs),
    ).to_dict()
    out = Path(options.out_dir) / f"trial-{trial.number}"
    trainer = prepare_run(
        [Path(p) for p in options.paths],
        {**model, "embedding_size": None},
        training,
        TextPolicy(),
        out,
        show_progress=False,
    )
    trial.set_user_attr("run_dir", str(out))

    reported: set[int] = set()

    def report(record: dict) -> bool:
        value = record["val_loss"] if record["val_loss"] is not None else record["train_loss"]
        second = int(record["elapsed"])
        if second not in reported:  # Optuna keeps one value per step and warns about another
            trial.report(value, second)
            reported.add(second)
        return trial.should_prune()

    trainer.on_eval = report
    result = trainer.run(show_progress=False)
    trial.set_user_attr("steps", result.step)
    trial.set_user_attr("seconds", round(trainer.progress["elapsed"], 1))
    if result.signal:
        stop["signal"] = result.signal
        trial.study.stop()
    if result.reason == "pruned":
        raise optuna.TrialPruned(f"behind at {int(trainer.progress['elapsed'])} s")
    if not math.isfinite(result.best_val):
        raise optuna.TrialPruned("no finite validation loss")
    return result.best_val


def optimize(options: TuneOptions) -> int | None:
    """Run trials in this process until the deadline (or options.trials in the study). -> the
    signal that stopped it, if any."""
    optuna = _optuna()
    study = open_study(options)
    stop: dict = {}

    def enough_left(study, trial) -> None:
        if options.deadline - time.time() < options.min_trial_seconds / 2:
            study.stop()

    callbacks = [enough_left]
    if options.trials:  # counted over the whole study, whichever process ran them
        callbacks.append(optuna.study.MaxTrialsCallback(options.trials, states=None))
        if len(study.trials) >= options.trials:
            return None
    study.optimize(
        lambda trial: run_trial(trial, options, stop),
        timeout=max(0.0, options.deadline - time.time()),
        catch=(CharRNNError,),
        callbacks=callbacks,
    )
    return stop.get("signal")


def join_command(options: TuneOptions) -> list[str]:
    """The command line of one more local process of the same study."""
    cmd = [sys.executable, "-m", "charrnn", "tune", *options.paths, "-o", options.out_dir, "--join"]
    cmd += ["--deadline", repr(options.deadline), "--trial-time", repr(options.trial_seconds)]
    cmd += ["--min-trial-time", repr(options.min_trial_seconds), "--jobs", str(options.jobs)]
    cmd += ["--study", options.study, "--trials", str(options.trials)]
    cmd += ["--storage", options.storage] if options.storage else []
    return cmd + (["--space", options.space_file] if options.space_file else [])


def tune(options: TuneOptions) -> int | None:
    """The whole study from this machine: jobs processes until the deadline; leaves the best
    trial's checkpoints in out_dir/best. -> the signal that stopped it, if any."""
    _optuna()
    Path(options.out_dir).mkdir(parents=True, exist_ok=True)
    open_study(options)  # create it once, before several processes race to
    # the joined processes import this very charrnn, installed or not
    path = [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    others = [subprocess.Popen(join_command(options), env=env) for _ in range(options.jobs - 1)]
    try:
        signum = optimize(options)
    finally:
        for proc in others:
            proc.wait()
    keep_best(options)
    return signum


def keep_best(options: TuneOptions) -> Path | None:
    """Copy the best finished trial's run directory to out_dir/best (checkpoints and metrics)."""
    study = open_study(options)
    done = [t for t in study.trials if t.value is not None and "run_dir" in t.user_attrs]
    if not done:
        return None
    best = min(done, key=lambda t: t.value)
    target = Path(options.out_dir) / "best"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(best.user_attrs["run_dir"], target, ignore=shutil.ignore_patterns("corpus.ids"))
    return target


def results_table(options: TuneOptions) -> str:
    """Every trial, best first: value, state, steps, seconds and its settings."""
    study = open_study(options)
    names = list(options.search_space())
    rows = sorted(study.trials, key=lambda t: (t.value is None, t.value or 0.0, t.number))
    lines = [
        f"{'trial':>5} {'state':<9} {'val':>7} {'steps':>6} {'secs':>6}  "
        + " ".join(f"{n:>11}" for n in names)
    ]
    for t in rows:
        # a pruned trial shows the last loss it reported
        last = t.intermediate_values.get(t.last_step) if t.last_step is not None else None
        value = t.value if t.value is not None else last
        value = f"{value:.4f}" if value is not None else "-"
        cells = " ".join(f"{_show(t.params.get(n)):>11}" for n in names)
        lines.append(
            f"{t.number:>5} {t.state.name.lower():<9} {value:>7} {t.user_attrs.get('steps', '-'):>6} "
            f"{t.user_attrs.get('seconds', '-'):>6}  {cells}"
        )
    return "\n".join(lines)


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
