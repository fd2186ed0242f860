"""Does anything but an epoch's length grow with the corpus? `make bench-scale CORPUS=path`.

Builds corpora of each --sizes by repeating the source text (and one of --mixed-size from a
mixed-script text of ~3,000 distinct characters, the large-vocabulary case), then, for each,
in fresh processes and with `charrnn train`'s defaults:

    start       seconds from the call to the first training step (reading, checking, encoding)
    train       chars/s over --steps steps, evaluations excluded, and the share of the run's wall
                time spent validating (default evaluation budget)
    resume      seconds from `--resume` of that run to its first step
    rss         peak RSS of training, summed over charrnn's processes (MiB)
    score       `charrnn score` chars/s of the corpus (the first --score-seconds of it: a whole
                1 GB score takes hours) and its peak RSS, reading included

    python benchmarks/scale.py --corpus corpora/python-stdlib.txt --sizes 10M,100M,1G

Corpora go to --workdir (default: a temporary directory, removed afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import synthetic_japanese

SIZES = {"K": 10**3, "M": 10**6, "G": 10**9}


def parse_size(text: str) -> int:
    return int(float(text[:-1]) * SIZES[text[-1].upper()]) if text[-1].upper() in SIZES else int(text)


def make_corpus(source: str, size: int, path: Path) -> None:
    """source repeated to `size` bytes of UTF-8 (up to 3 fewer: never half a character)."""
    block = source.encode("utf-8")
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(block), size - written)
            while 0 < n < len(block) and block[n] & 0xC0 == 0x80:  # a continuation byte
                n -= 1
            if n == 0:
                break
            f.write(block[:n])
            written += n


def family_rss_kib() -> int:
    """Peak RSS (VmHWM) of this process and its children (charrnn's worker processes), in KiB."""
    pids = ["self"]
    for task in Path("/proc/self/task").iterdir():
        children = task / "children"
        if children.exists():
            pids += children.read_text().split()
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return total


# ---------------------------------------------------------------------- child processes


def child_train(corpus: str, out: str, steps: int, resume: bool) -> dict:
    """Train as `charrnn train corpus -o out --max-steps steps [--resume]`, timed from within."""
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.prepare import prepare_run
    from charrnn.text import TextPolicy

    t0 = time.monotonic()
    model_options = {} if resume else {**ModelConfig(vocab_size=1).to_dict(), "embedding_size": None}
    model_options.pop("vocab_size", None)
    train_options = {"max_steps": steps} if resume else {**TrainConfig().to_dict(), "max_steps": steps}
    trainer = prepare_run([Path(corpus)], model_options, train_options, TextPolicy(), Path(out), resume)
    marks = {"eval": 0.0, "rss": 0}
    update, val_loss, save = trainer.adam.update, trainer.val_loss, trainer.save

    def timed_update(*args):
        marks.setdefault("first_step", time.monotonic() - t0)
        return update(*args)

    def timed_val_loss():
        start = time.monotonic()
        try:
            return val_loss()
        finally:
            marks["eval"] += time.monotonic() - start

    def measured_save(name):
        marks["rss"] = max(marks["rss"], family_rss_kib())  # the workers are alive until after this
        save(name)

    trainer.adam.update, trainer.val_loss, trainer.save = timed_update, timed_val_loss, measured_save
    begin = trainer.progress["step"]
    started = time.monotonic()
    result = trainer.run(show_progress=False)
    wall = time.monotonic() - started
    t = trainer.tcfg
    return {
        "first_step": marks["first_step"],
        "steps": result.step - begin,
        "train_chars_per_sec": (result.step - begin) * t.batch_size * t.seq_len / (wall - marks["eval"]),
        "eval_share": marks["eval"] / wall,
        "rss_mib": marks["rss"] / 1024,
        "chars": trainer.corpus.num_chars,
        "vocab": len(trainer.corpus.vocab),
        "coverage": trainer.validation.coverage(),
    }


class EnoughError(Exception):
    """Raised from inside the scoring loop once it has run long enough to be measured."""


def child_score(checkpoint: str, corpus: str, seconds: float) -> dict:
    """`charrnn score`'s path (reading included) stopped after `seconds` of scoring."""
    from charrnn import scoring
    from charrnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    marks = {"chars": 0, "rss": 0}

    class Counter:
        def __init__(self, *args, **kwargs):
            marks["start"] = time.monotonic()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k: int) -> None:
            marks["chars"] += k
            marks["rss"] = max(marks["rss"], family_rss_kib())
            if time.monotonic() - marks["start"] > seconds:
                raise EnoughError

    scoring.scoring_bar = Counter
    t0 = time.monotonic()
    with contextlib.suppress(EnoughError):
        scoring.score_file(ckpt.model(), ckpt.vocab, ckpt.text_policy, Path(corpus))
    return {
        "read_seconds": marks["start"] - t0,
        "score_chars_per_sec": marks["chars"] / (time.monotonic() - marks["start"]),
        "score_rss_mib": max(marks["rss"], family_rss_kib()) / 1024,
    }


# ---------------------------------------------------------------------- the driver


def in_child(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(corpus: Path, out: Path, steps: int, score_seconds: float) -> dict:
    row = in_child("train", str(corpus), str(out), str(steps))
    row["resume_first_step"] = in_child("resume", str(corpus), str(out), str(steps + 1))["first_step"]
    row.update(in_child("score", str(out / "last.npz"), str(corpus), str(score_seconds)))
    return row


def report(rows: dict, steps: int) -> str:
    lines = [
        f"{'corpus':<22}{'chars':>15}{'vocab':>7}{'start s':>9}{'train c/s':>11}{'eval %':>8}"
        f"{'resume s':>10}{'RSS MiB':>9}{'score c/s':>11}{'score MiB':>11}"
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<22}{r['chars']:>15,}{r['vocab']:>7}{r['first_step']:>9.1f}"
            f"{r['train_chars_per_sec']:>11,.0f}{100 * r['eval_share']:>8.1f}{r['resume_first_step']:>10.1f}"
            f"{r['rss_mib']:>9,.0f}{r['score_chars_per_sec']:>11,.0f}{r['score_rss_mib']:>11,.0f}"
        )
    repeated = [r for name, r in rows.items() if name.startswith("repeated")]
    first, last = repeated[0], repeated[-1]
    lines.append(
        f"training chars/s, largest / smallest repeated corpus: "
        f"{last['train_chars_per_sec'] / first['train_chars_per_sec']:.2f}; peak RSS: "
        f"{last['rss_mib'] / first['rss_mib']:.2f}x ({steps} steps each; validation on {last['coverage']})"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, default=Path("corpora/python-stdlib.txt"))
    ap.add_argument("--sizes", default="10M,100M,1G")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--score-seconds", type=float, default=30.0)
    ap.add_argument("--mixed-size", default="100M", help="the large-vocabulary corpus (0: none)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "score":
            print(json.dumps(child_score(rest[0], rest[1], float(rest[2]))))
        else:
            print(json.dumps(child_train(rest[0], rest[1], int(rest[2]), kind == "resume")))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="charrnn-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = args.corpus.read_text(encoding="utf-8")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    corpora = {f"repeated {s:,} B": (source, s) for s in sizes}
    mixed_size = parse_size(args.mixed_size)
    if mixed_size:
        japanese = synthetic_japanese(400_000).splitlines(True)
        mixed = "".join(a + b for a, b in zip(source.splitlines(True)[:20_000], japanese))
        corpora[f"mixed-script {mixed_size:,} B"] = (mixed, mixed_size)
    rows = {}
    try:
        for k, (name, (text, size)) in enumerate(corpora.items()):
            path = workdir / f"corpus-{k}.txt"
            make_corpus(text, size, path)
            rows[name] = measure(path, workdir / f"run-{k}", args.steps, args.score_seconds)
            path.unlink()
            shutil.rmtree(workdir / f"run-{k}")
            print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(report(rows, args.steps))


if __name__ == "__main__":
    main()
