#!/usr/bin/env bash
# Equal-time pairs for docs/RESULTS.md: charrnn's LSTM 2x256 with its defaults against PyTorch's
# nn.LSTM 2x256 as shipped (benchmarks/torch_train.py), back to back, alternating which goes
# first, one pair per seed; each pair holds /tmp/cpu.lock so nothing else timed runs beside it.
#   benchmarks/pairs.sh CORPUS OUT_DIR [SECONDS] [PAIRS]
set -euo pipefail
corpus=$1 out=$2 seconds=${3:-180} pairs=${4:-5}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
charrnn_run() { "$py" -m charrnn train "$corpus" --model lstm --max-time "$seconds" --eval-chars 0 \
    --seed "$1" -q -o "$out/charrnn-$1"; }
torch_run() { "$py" benchmarks/torch_train.py "$corpus" --max-time "$seconds" --seed "$1" -o "$out/torch-$1"; }
for seed in $(seq 1 "$pairs"); do
    if ((seed % 2)); then order="torch_run charrnn_run"; else order="charrnn_run torch_run"; fi
    flock /tmp/cpu.lock bash -c "$(declare -f charrnn_run torch_run); corpus='$corpus' out='$out' \
        seconds='$seconds' py='$py'; for f in $order; do \$f $seed; done"
done
"$py" - "$out" "$pairs" <<'PY'
import json, sys
from pathlib import Path
out, pairs = Path(sys.argv[1]), int(sys.argv[2])
def last_eval(run):
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if "val_loss" in r]
    return evals[-1]["val_loss"], evals[-1]["step"]
wins = 0
for seed in range(1, pairs + 1):
    (c, cs), (t, ts) = last_eval(out / f"charrnn-{seed}"), last_eval(out / f"torch-{seed}")
    wins += c < t
    print(f"seed {seed}: charrnn {c:.4f} ({cs:,} steps)  torch {t:.4f} ({ts:,} steps)")
print(f"charrnn lower in {wins} of {pairs}")
PY
