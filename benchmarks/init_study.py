"""Learning curves for initialisation choices: the evidence behind `model.init_params`.

Trains charrnn for a fixed number of steps with one gate-bias variant applied to the freshly
created weights, and prints validation nats/char at each evaluation, so variants compare step
for step on the same windows and the same seed (docs/RESULTS.md, "Initialisation"):

    python benchmarks/init_study.py corpora/tinyshakespeare.txt --cell lstm --variant forget0 \
        --steps 1600 --seed 7 -o runs/init/ts-lstm-forget0

Variants name the bias of one gate (gate order from charrnn.cells): `default` leaves the
weights as `charrnn train` makes them; `<gate>0` draws that gate's bias like every other
weight, U(-1/sqrt(H), 1/sqrt(H)); `<gate>1` / `<gate>-1` set it to +1 / -1.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from charrnn.cells import GRU_GATES, LSTM_GATES
from charrnn.config import CELLS, TrainConfig
from charrnn.prepare import prepare_run
from charrnn.text import TextPolicy

GATE_ORDER = {"lstm": LSTM_GATES, "gru": GRU_GATES, "rnn": ("h",)}


def apply_variant(params: dict, cell: str, hidden: int, layers: int, variant: str, seed: int) -> None:
    """Set one gate's bias in every layer, in place, as the variant names it."""
    if variant == "default":
        return
    match = re.fullmatch(r"([a-z])(-?[01])", variant)
    if not match or match[1] not in GATE_ORDER[cell]:
        raise SystemExit(f"unknown variant {variant!r} for {cell} (gates {GATE_ORDER[cell]})")
    gate, value = GATE_ORDER[cell].index(match[1]), int(match[2])
    rng = np.random.default_rng(seed + 1)
    bound = 1.0 / np.sqrt(hidden)
    for k in range(layers):
        b = params[f"l{k}.b"][gate * hidden : (gate + 1) * hidden]
        b[...] = rng.uniform(-bound, bound, hidden) if value == 0 else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--cell", choices=CELLS, default="lstm")
    ap.add_argument("--variant", default="default")
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model_options = {"cell": args.cell, "hidden_size": args.hidden_size, "num_layers": args.layers}
    train_options = dict(
        TrainConfig(
            seed=args.seed,
            max_steps=args.steps,
            eval_every=args.eval_every,
            batch_size=args.batch_size,
            patience=0,
            epochs=0,
            save_every=0,
        ).to_dict()
    )
    trainer = prepare_run([args.corpus], model_options, train_options, TextPolicy(), args.output)
    apply_variant(trainer.model.params, args.cell, args.hidden_size, args.layers, args.variant, args.seed)
    result = trainer.run(show_progress=False)
    curve = [
        (r["step"], r["val_loss"])
        for r in map(json.loads, (args.output / "metrics.jsonl").read_text().splitlines())
        if r.get("val_loss") is not None
    ]
    print(
        json.dumps(
            {
                "corpus": args.corpus.name,
                "cell": args.cell,
                "variant": args.variant,
                "seed": args.seed,
                "steps": result.step,
                "curve": curve,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
