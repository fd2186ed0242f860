"""Does a model's sample get stuck? The longest run of one repeated character per seed.

Issue 17's check for `make demo`: sample each seed at the demo's length, temperature and prime
(`-n 700 -t 0.7 --prime "def "`; add its DRY sampler with `-- --dry-multiplier 0.8`) and count the
samples holding a run of --limit or more identical characters (a model looping on
indentation or a comment banner), beside the rate at which the training text itself holds
such a run in a window of the same length (a faithful model writes them that often):

    python benchmarks/sample_loops.py checkpoints/demo --corpus corpora/python-stdlib.txt
    python benchmarks/sample_loops.py checkpoints/demo -- --dry-multiplier 0.8

Arguments after `--` go to `charrnn sample` as they are.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

RUN = re.compile(r"(.)\1*", flags=re.S)


def longest_run(text: str) -> tuple[int, str]:
    """(length, character) of the longest run of one repeated character."""
    return max(((len(m[0]), m[0][0]) for m in RUN.finditer(text)), default=(0, ""))


def corpus_runs(path: str, length: int, limit: int) -> tuple[float, int]:
    """(the fraction of length-char windows of the text that hold a run of limit or more,
    the longest run in the text)."""
    text = Path(path).read_text(encoding="utf-8")
    hits = np.zeros(len(text) + 1, dtype=np.int32)
    longest = 0
    for m in RUN.finditer(text):
        longest = max(longest, len(m[0]))
        if len(m[0]) >= limit:
            # a window [s, s + length) holds the run when it starts in [end - length, start]
            hits[max(0, m.end() - length)] += 1
            hits[m.start() + 1] -= 1
    windows = max(len(text) - length + 1, 1)
    return float((np.cumsum(hits)[:windows] > 0).mean()), longest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--length", type=int, default=700)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--corpus", help="also give the training text's own rate of such runs")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, sample_args = ap.parse_args(argv[:cut]), argv[cut + 1 :]
    demo = ["-n", str(args.length), "-t", "0.7", "--prime", "def "]
    longest = []
    for seed in range(1, args.seeds + 1):
        cmd = [sys.executable, "-m", "charrnn", "sample", "-c", args.checkpoint, *demo, "--seed", str(seed)]
        out = subprocess.run(cmd + sample_args, capture_output=True, text=True, check=True).stdout
        longest.append(longest_run(out))
    stuck = sum(n >= args.limit for n, _ in longest)
    print(f"{stuck} of {args.seeds} samples hold a run of {args.limit}+ identical characters")
    print("longest run per seed: " + " ".join(f"{n}{c!r}" for n, c in longest))
    if args.corpus:
        rate, most = corpus_runs(args.corpus, args.length, args.limit)
        print(f"the corpus holds one in {rate:.1%} of its {args.length}-char windows")
        beyond = sum(n > most for n, _ in longest)
        print(f"{beyond} of {args.seeds} samples hold a run longer than any in the corpus ({most})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
