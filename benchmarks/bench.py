"""charrnn against the identical PyTorch CPU model, side by side: `make bench CORPUS=path`.

What runs (batch 64, seq 100, float32, Adam lr 2e-3, global-norm clipping 5, state carried):
    training  chars/s   LSTM 1x128, 2x256, 2x512, GRU 2x256, RNN 2x256 (one-hot input), LSTM 2x256
                        with a 64-wide embedding on the corpus and on ~3,000 synthetic Japanese-like
                        characters (the large-vocabulary case)
    sampling  chars/s   LSTM 2x256 and 2x512 at batch 1 (what `charrnn sample` does), 2x256 with 16
                        samples; temperature 1, every character drawn from the full softmax
    scoring   chars/s   LSTM 2x256, exact (one stream) and 64 parallel streams (200-char warm-up);
                        forward / training: the 64-stream figure over the same model's training
                        figure, for each framework (a forward is a third of a training step's products)
    start-up  seconds   `charrnn --version`, and `charrnn perplexity` of a 2 kB file with a 2x256
                        LSTM checkpoint: each command run --startup-runs times in a fresh process,
                        wall-clock from spawn to exit (median, min, max) and the CPU seconds it used
    memory              peak RSS of a training process (charrnn: summed over its worker processes),
                        and saved activations per character
Each framework runs in its own worker process (so RSS is per framework, and OpenBLAS threads and
torch.set_num_threads are both set to --threads). charrnn trains as `charrnn train` does: with
--threads cores it starts that many worker processes of one BLAS thread each (charrnn.parallel),
at most one per 8 of the 64 streams; scoring 64 streams of 200,000 characters does the same
(`charrnn score`'s rule), sampling runs in the one process. Every
measurement is repeated --rounds times, alternating which framework goes first, and the table
gives medians and charrnn / torch ratios.

FLOPs per character (training) count only matrix products, from the model's shapes: a product of
(M, K) by (K, N) is 2 M K N FLOPs. Per character and layer, the input projection costs 2 D G
(D = input width, G = gates * H) and the recurrent product 2 H G; the output layer 2 H V. The
backward pass does two products of the same size for each (the input gradient and the weight
gradient), so training costs 3x the forward. The one-hot input of layer 0 is a row gather, not a
product: it counts 0 forward and 0 backward (its weight gradient is a scatter-add). An embedding
layer's lookup counts 0; its product into layer 0 counts like any other input projection.
Element-wise work (gates, softmax, Adam) is not counted. The fraction of peak is chars/s x
FLOPs/char / the float32 matmul rate of a large square product through NumPy's BLAS.

Sampling's weight-read bound is the chars/s a machine reaches if each character only had to read
every weight it uses once (all of Wh, Wx above layer 0, Wy, the biases, one row of layer 0's input
weights), at the read bandwidth measured by a dot product over a buffer of that size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH, SEQ, LR, CLIP = 64, 100, 2e-3, 5.0
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
PATHS = ("train", "sample", "score", "startup")  # what --only picks from
STARTUP_CHARS = 2000  # the text `charrnn perplexity` scores in the start-up measurement


# ---------------------------------------------------------------------------- what is measured


def model_cfg(cell: str, layers: int, hidden: int, vocab: int, embedding: int = 0) -> dict:
    return {
        "cell": cell,
        "num_layers": layers,
        "hidden_size": hidden,
        "vocab_size": vocab,
        "embedding_size": embedding,
    }


def cases(vocab: int, big_vocab: int, quick: bool) -> list[dict]:
    """Every measurement, as {"name", "kind", "cfg", ...}; `data` names the id array used."""
    if quick:
        small = model_cfg("lstm", 1, 32, vocab)
        return [
            {"name": "lstm 1x32", "kind": "train", "cfg": small, "data": "corpus"},
            {"name": "gru 1x32 e16 (big vocab)", "kind": "train", "data": "big",
             "cfg": model_cfg("gru", 1, 32, big_vocab, 16)},
            {"name": "lstm 1x32 batch 1", "kind": "sample", "cfg": small, "samples": 1, "length": 50},
            {"name": "lstm 1x32 exact", "kind": "score", "cfg": small, "streams": 1, "chars": 3000},
            {"name": "lstm 1x32 4 streams", "kind": "score", "cfg": small, "streams": 4, "chars": 3000},
        ]  # fmt: skip
    lstm256, lstm512 = model_cfg("lstm", 2, 256, vocab), model_cfg("lstm", 2, 512, vocab)
    return [
        {"name": "lstm 1x128", "kind": "train", "cfg": model_cfg("lstm", 1, 128, vocab), "data": "corpus"},
        {"name": "lstm 2x256", "kind": "train", "cfg": lstm256, "data": "corpus"},
        {"name": "lstm 2x512", "kind": "train", "cfg": lstm512, "data": "corpus"},
        {"name": "gru 2x256", "kind": "train", "cfg": model_cfg("gru", 2, 256, vocab), "data": "corpus"},
        {"name": "rnn 2x256", "kind": "train", "cfg": model_cfg("rnn", 2, 256, vocab), "data": "corpus"},
        {"name": f"lstm 2x256 e64 V={vocab}", "kind": "train", "data": "corpus",
         "cfg": model_cfg("lstm", 2, 256, vocab, 64)},
        {"name": f"lstm 2x256 e64 V={big_vocab}", "kind": "train", "data": "big",
         "cfg": model_cfg("lstm", 2, 256, big_vocab, 64)},
        {"name": "lstm 2x256 batch 1", "kind": "sample", "cfg": lstm256, "samples": 1, "length": 200},
        {"name": "lstm 2x512 batch 1", "kind": "sample", "cfg": lstm512, "samples": 1, "length": 200},
        {"name": "lstm 2x256 16 samples", "kind": "sample", "cfg": lstm256, "samples": 16, "length": 200},
        {"name": "lstm 2x256 exact", "kind": "score", "cfg": lstm256, "streams": 1, "chars": 20_000},
        {"name": "lstm 2x256 64 streams", "kind": "score", "cfg": lstm256, "streams": 64, "chars": 200_000},
    ]  # fmt: skip


def train_flops_per_char(cfg: dict) -> int:
    """Matrix-product FLOPs of one training character (forward + backward), see the docstring."""
    H, V, E = cfg["hidden_size"], cfg["vocab_size"], cfg["embedding_size"]
    G = GATES[cfg["cell"]] * H
    forward = 2 * H * V
    for k in range(cfg["num_layers"]):
        inputs = H if k else E  # E = 0: one-hot input, a gather
        forward += 2 * inputs * G + 2 * H * G
    return 3 * forward


def weights_read_per_char(cfg: dict) -> int:
    """float32 bytes a batch-1 step reads if every weight it uses is read once."""
    H, V, E = cfg["hidden_size"], cfg["vocab_size"], cfg["embedding_size"]
    G = GATES[cfg["cell"]] * H
    floats = H * V + V + (E + E * G if E else G)  # output layer; embedding row + product, or a row
    floats += cfg["num_layers"] * (H * G + G) + (cfg["num_layers"] - 1) * H * G
    return 4 * floats


# ---------------------------------------------------------------------------- data


def synthetic_japanese(n: int, distinct: int = 3000, seed: int = 0) -> str:
    """Japanese-like text of n characters drawing on about `distinct` characters: words of one to
    four kanji or katakana (Zipf-distributed, as real character frequencies are), joined by
    hiragana particles, with 、 and 。 between phrases and a newline every few sentences."""
    rng = np.random.default_rng(seed)
    hiragana = [chr(c) for c in range(0x3041, 0x3094)]
    katakana = [chr(c) for c in range(0x30A1, 0x30F7)]
    kanji = [
        chr(0x4E00 + c) for c in rng.choice(20_000, distinct - len(hiragana) - len(katakana), replace=False)
    ]
    symbols = np.array(kanji + katakana)
    ranks = np.arange(1, len(symbols) + 1)
    weights = 1.0 / ranks
    weights /= weights.sum()
    particles = ["の", "は", "を", "に", "が", "と", "で", "も", "から", "まで", "です", "ます"]
    ends = ["", "", "", "、", "。", "。\n"]
    words = n // 3  # pieces average over four characters; draw enough, then cut
    stream = iter(rng.choice(symbols, size=5 * words, p=weights).tolist())
    lengths, kana = rng.integers(1, 5, words).tolist(), rng.integers(0, 3, words).tolist()
    particle, end = (
        rng.integers(len(particles), size=words).tolist(),
        rng.integers(len(ends), size=words).tolist(),
    )
    kana_stream = iter(rng.choice(hiragana, size=3 * words).tolist())
    out = []
    for w in range(words):
        out += [next(stream) for _ in range(lengths[w])]
        out += [particles[particle[w]]] + [next(kana_stream) for _ in range(kana[w])] + [ends[end[w]]]
    return "".join(out)[:n]


def prepare_data(corpus: Path, workdir: Path, big_chars: int, big_vocab: int) -> tuple[int, int]:
    """Encode the corpus and the synthetic large-vocabulary text to .npy files in workdir.
    -> (corpus vocabulary size, large vocabulary size)."""
    from charrnn.data import load_corpus
    from charrnn.vocab import Vocab

    c = load_corpus([corpus])
    np.save(workdir / "corpus.npy", np.asarray(c.ids, dtype=np.int64))
    text = synthetic_japanese(big_chars, big_vocab)
    vocab = Vocab.from_text(text)
    ids, _ = vocab.encode(text)
    np.save(workdir / "big.npy", ids.astype(np.int64))
    return len(c.vocab), len(vocab)


def score_rows(ids: np.ndarray, streams: int, warmup: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The rows charrnn.scoring.score_ids cuts ids into (its tail of under `streams` characters
    left out), for the torch side: -> rows (S, W + L + 1), counted_from (S,)."""
    n = len(ids)
    S = max(1, min(streams, (n - 1 - warmup) // (4 * warmup)))
    if S == 1:
        return ids[None, :], np.zeros(1, np.int64)
    L = (n - 1 - warmup) // S
    starts = [0] + [s * L for s in range(1, S)]
    rows = np.stack([ids[q : q + warmup + L + 1] for q in starts])
    return rows, np.array([0] + [warmup] * (S - 1))


# ---------------------------------------------------------------------------- start-up


def startup_files(corpus: Path, workdir: Path) -> tuple[Path, Path]:
    """A 2x256 LSTM checkpoint (fresh weights: scoring costs the same) with the corpus's
    vocabulary, and the corpus's first STARTUP_CHARS characters. -> (checkpoint, text file)."""
    from charrnn.checkpoint import Checkpoint, save_checkpoint
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN
    from charrnn.text import DEFAULT_POLICY, read_text
    from charrnn.vocab import Vocab

    text = read_text(corpus)
    vocab = Vocab.from_text(text)
    model = CharRNN.create(ModelConfig(**model_cfg("lstm", 2, 256, len(vocab))))
    ckpt, small = workdir / "startup.npz", workdir / "small.txt"
    save_checkpoint(ckpt, Checkpoint(model.config, model.params, vocab, DEFAULT_POLICY))
    small.write_text(text[:STARTUP_CHARS], encoding="utf-8")
    return ckpt, small


def startup_times(args, workdir: Path) -> dict:
    """{command: {"wall": [s per run], "cpu": [s per run]}}: each command in a fresh process,
    timed from spawn to exit by the parent (perf_counter) and by the CPU it used (getrusage of
    the children, user + system)."""
    ckpt, small = startup_files(args.corpus, workdir)
    charrnn = [sys.executable, "-m", "charrnn"]
    perplexity = [*charrnn, "perplexity", "-c", str(ckpt), str(small)]
    commands = {
        "charrnn --version": [*charrnn, "--version"],
        f"charrnn perplexity ({STARTUP_CHARS // 1000} kB)": perplexity,
    }
    times = {name: {"wall": [], "cpu": []} for name in commands}
    for _ in range(args.startup_runs):
        for name, cmd in commands.items():  # alternating, so a slow minute hits both
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[name]["wall"].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name]["cpu"].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return times


# ---------------------------------------------------------------------------- workers


def rss_kib(field: str, pids=("self",)) -> int:
    """VmRSS (now) or VmHWM (peak) in KiB, summed over processes, from /proc (Linux). Pages
    shared between them (charrnn's weights in shared memory) count once per process."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def timed(fn, chars_per_call: int, min_time: float) -> dict:
    """Call fn until min_time seconds have passed (at least twice). -> {"chars", "seconds"}."""
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_time:
        fn()
        calls += 1
    return {"chars": calls * chars_per_call, "seconds": time.perf_counter() - start}


class CharrnnSide:
    """The charrnn half of every measurement, through its public API."""

    name = "charrnn"

    def __init__(self, workdir: Path, threads: int):
        self.workdir, self.threads = workdir, threads
        self.workers = contextlib.ExitStack()  # training workers live as long as this process

    def trainer(self, cfg: dict, ids: np.ndarray):
        """One training step as `charrnn train` runs it: with --threads cores, worker processes
        with one BLAS thread each share the streams (charrnn.parallel)."""
        from charrnn.config import ModelConfig
        from charrnn.data import Batches
        from charrnn.model import CharRNN
        from charrnn.optim import Adam, clip_grad_norm
        from charrnn.parallel import auto_workers, parallel_or_model

        model = CharRNN.create(ModelConfig(**cfg))
        workers = auto_workers(BATCH, self.threads)
        source = self.workers.enter_context(parallel_or_model(model, BATCH, SEQ, workers))
        adam, batches = Adam(model.params), Batches(ids, BATCH, SEQ)
        run = {"state": None, "window": 0}

        def step():
            x, y = batches.window(run["window"])
            run["window"] += 1
            loss, grads, run["state"] = source.loss_and_grads(x, y, run["state"])
            clip_grad_norm(grads, CLIP)
            adam.update(model.params, grads, LR)

        step.batches, step.model = batches, model
        step.pids = ["self"] + [p.pid for p in getattr(source, "procs", [])]
        return step

    def saved_bytes(self, step) -> int:
        """Bytes a forward keeps for backward: what the cell stack retains (tracemalloc sees
        NumPy's buffers) plus the (N*T, V) softmax the loss hands to backward."""
        import tracemalloc

        x, _ = step.batches.window(0)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = step.model._run(x, None, None)
        retained = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del kept
        return retained + x.size * step.model.config.vocab_size * 4

    def sampler(self, cfg: dict, samples: int, length: int):
        from charrnn.config import ModelConfig, SampleOptions
        from charrnn.model import CharRNN
        from charrnn.sampling import generate
        from charrnn.vocab import Vocab

        model = CharRNN.create(ModelConfig(**cfg))
        vocab = Vocab(np.arange(0x4E00, 0x4E00 + cfg["vocab_size"]))  # any characters will do
        opts = SampleOptions(length=length, temperature=1.0, num_samples=samples, seed=0)
        return lambda: sum(1 for _ in generate(model, vocab, opts))

    def scorer(self, cfg: dict, ids: np.ndarray, streams: int):
        from charrnn.config import ModelConfig
        from charrnn.model import CharRNN
        from charrnn.parallel import auto_workers
        from charrnn.scoring import score_ids

        model = CharRNN.create(ModelConfig(**cfg))
        # as `charrnn score` on --threads cores; workers start (and stop) in every call
        return lambda: score_ids(model, ids, streams, workers=auto_workers(streams, self.threads))

    def matmul_peak(self) -> float:
        a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
        out = np.empty_like(a)
        best = min(_clock(lambda: np.matmul(a, a, out=out)) for _ in range(8))
        return 2 * 2048**3 / best / 1e9

    def read_bandwidth(self, nbytes: int) -> float:
        """Bytes/s of reading a float32 buffer of nbytes (a dot product, best of many)."""
        a = np.ones(max(nbytes // 4, 1024), np.float32)
        reps = max(1, (1 << 26) // a.nbytes)
        best = min(_clock(lambda: [np.dot(a, a) for _ in range(reps)]) for _ in range(8))
        return a.nbytes * reps / best


class TorchSide:
    """The PyTorch half: the same measurements through benchmarks/torch_baseline.py."""

    name = "torch"

    def __init__(self, workdir: Path, threads: int):
        import torch_baseline as tb

        self.tb, self.workdir = tb, workdir

    def trainer(self, cfg: dict, ids: np.ndarray):
        from charrnn.data import Batches

        trainer, batches = self.tb.Trainer(cfg, LR, CLIP), Batches(ids, BATCH, SEQ)
        run = {"window": 0}

        def step():
            trainer.step(*batches.window(run["window"]))
            run["window"] += 1

        step.batches, step.trainer = batches, trainer
        return step

    def saved_bytes(self, step) -> int:
        return step.trainer.saved_activation_bytes(*step.batches.window(0))

    def sampler(self, cfg: dict, samples: int, length: int):
        model = self.tb.build(cfg)
        return lambda: self.tb.sample(model, length, samples)

    def scorer(self, cfg: dict, ids: np.ndarray, streams: int):
        from charrnn.scoring import window_len

        model = self.tb.build(cfg)
        rows, counted = score_rows(ids, streams)
        window = window_len(cfg["vocab_size"], len(rows))  # charrnn's windows
        return lambda: self.tb.score(model, rows, counted, window)

    def matmul_peak(self) -> float:
        import torch

        a = torch.randn(2048, 2048)
        out = torch.empty_like(a)
        best = min(_clock(lambda: torch.matmul(a, a, out=out)) for _ in range(8))
        return 2 * 2048**3 / best / 1e9


def _clock(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def serve(side, workdir: Path, min_time: float) -> None:
    """Worker loop: one JSON request per stdin line, one JSON answer per stdout line."""
    data = {name: np.load(workdir / f"{name}.npy") for name in ("corpus", "big")}
    built = {}
    for line in sys.stdin:
        req = json.loads(line)
        kind, key = req["kind"], req.get("name")
        if kind == "peak":
            answer = {"gflops": side.matmul_peak()}
            if hasattr(side, "read_bandwidth"):
                answer["bandwidth"] = {str(b): side.read_bandwidth(b) for b in req["weight_bytes"]}
        elif kind == "memory":
            answer = memory_probe(side, req, data)
        else:
            if key not in built:
                built[key] = build_measurement(side, req, data)
                built[key][0]()  # warm-up: first-call allocations, BLAS thread start
            fn, chars = built[key]
            answer = timed(fn, chars, min_time)
        print(json.dumps(answer), flush=True)


def build_measurement(side, req: dict, data: dict):
    """-> (function doing one unit of work, characters it processes)."""
    cfg = req["cfg"]
    if req["kind"] == "train":
        return side.trainer(cfg, data[req["data"]]), BATCH * SEQ
    if req["kind"] == "sample":
        return side.sampler(cfg, req["samples"], req["length"]), req["samples"] * req["length"]
    ids = data["corpus"][: req["chars"]]
    return side.scorer(cfg, ids, req["streams"]), len(ids) - 1


def memory_probe(side, req: dict, data: dict) -> dict:
    """A fresh process trains 3 steps: RSS before the first step and at its peak, in MiB, and
    the bytes per character the forward keeps for backward."""
    step = side.trainer(req["cfg"], data[req["data"]])
    pids = getattr(step, "pids", ["self"])  # charrnn's worker processes count too
    before = rss_kib("VmRSS", pids)
    for _ in range(3):
        step()
    peak = rss_kib("VmHWM", pids)
    saved = side.saved_bytes(step)
    return {"rss_before": before / 1024, "rss_peak": peak / 1024, "saved_per_char": saved / (BATCH * SEQ)}


# ---------------------------------------------------------------------------- the driver


class Worker:
    def __init__(self, side: str, args, workdir: Path):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, __file__, "--worker", side, "--workdir", str(workdir)]
        cmd += ["--threads", str(args.threads), "--min-time", str(args.min_time)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_all(args, workdir: Path, todo: list[dict], sides: list[str]) -> dict:
    """Alternate the frameworks over rounds; -> {case name: {side: [chars/s per round]}} plus
    the machine figures and memory probes."""
    results = {"speed": {c["name"]: {s: [] for s in sides} for c in todo}, "peak": {}, "memory": {}}
    if "startup" in args.only:
        results["startup"] = startup_times(args, workdir)
    if not todo:
        return results
    workers = {s: Worker(s, args, workdir) for s in sides}
    weight_bytes = sorted({weights_read_per_char(c["cfg"]) for c in todo if c["kind"] == "sample"})
    peaks = {s: [] for s in sides}
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for s in order:  # a busy machine lowers a peak measurement, never raises it: keep the best
            peaks[s].append(workers[s].ask({"kind": "peak", "weight_bytes": weight_bytes}))
        for case in todo:
            for s in order:
                t0 = time.perf_counter()
                got = workers[s].ask(case)
                if args.verbose:
                    print(
                        f"  {case['name']} {s}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True
                    )
                results["speed"][case["name"]][s].append(got["chars"] / got["seconds"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    for w in workers.values():
        w.close()
    results["peak"] = {s: _best_peak(p) for s, p in peaks.items()}
    probed = [c for c in todo if c["kind"] == "train"][: 1 if args.quick else None]
    for case in probed:  # a fresh process each: RSS is its own
        results["memory"][case["name"]] = {}
        for s in sides:
            w = Worker(s, args, workdir)
            results["memory"][case["name"]][s] = w.ask(dict(case, kind="memory"))
            w.close()
    return results


def _best_peak(answers: list[dict]) -> dict:
    best = {"gflops": max(a["gflops"] for a in answers)}
    if "bandwidth" in answers[0]:
        best["bandwidth"] = {k: max(a["bandwidth"][k] for a in answers) for k in answers[0]["bandwidth"]}
    return best


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def report(results: dict, todo: list[dict], sides: list[str], args, vocab: tuple[int, int]) -> str:
    import numpy

    has_torch = "torch" in sides
    med = {n: {s: statistics.median(v) for s, v in d.items()} for n, d in results["speed"].items()}

    def ratio(name):
        return med[name]["charrnn"] / med[name]["torch"] if has_torch else None

    def torch_med(name):
        return med[name]["torch"] if has_torch else None

    def of_kind(kind):
        return [c for c in todo if c["kind"] == kind]

    lines = [
        f"charrnn benchmark: corpus {args.corpus} (V={vocab[0]}), large vocabulary V={vocab[1]}; "
        f"batch {BATCH}, seq {SEQ}, float32, {args.threads} threads, medians of {args.rounds} rounds",
        f"numpy {numpy.__version__}, torch {_torch_version() if has_torch else 'not installed'}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
    ]
    if todo:
        peak = results["peak"]["charrnn"]["gflops"]
        lines.append(
            f"float32 matmul peak (2048^2): numpy {peak:.1f} GFLOP/s"
            + (f", torch {results['peak']['torch']['gflops']:.1f} GFLOP/s" if has_torch else "")
        )
    if of_kind("train"):
        lines += [
            "",
            f"{'training':<28}{'charrnn c/s':>12}{'torch c/s':>12}{'ratio':>7}{'MFLOP/c':>9}"
            f"{'charrnn %pk':>12}{'torch %pk':>10}",
        ]
    for c in of_kind("train"):
        n, f = c["name"], train_flops_per_char(c["cfg"])
        frac = {s: med[n][s] * f / (peak * 1e9) for s in sides}
        lines.append(
            f"{n:<28}{fmt(med[n]['charrnn']):>12}{fmt(torch_med(n)):>12}{fmt(ratio(n), '.2f'):>7}"
            f"{f / 1e6:>9.2f}{fmt(frac['charrnn'], '.1%'):>12}{fmt(frac.get('torch'), '.1%'):>10}"
        )
    if of_kind("sample"):
        lines += [
            "",
            f"{'sampling':<28}{'charrnn c/s':>12}{'torch c/s':>12}{'ratio':>7}"
            f"{'bound c/s':>11}{'of bound':>10}",
        ]
        bandwidth = results["peak"]["charrnn"]["bandwidth"]
    for c in of_kind("sample"):
        n, wb = c["name"], weights_read_per_char(c["cfg"])
        bound = bandwidth[str(wb)] / wb * c["samples"]  # a batch reads the weights once per step
        lines.append(
            f"{n:<28}{fmt(med[n]['charrnn']):>12}{fmt(torch_med(n)):>12}{fmt(ratio(n), '.2f'):>7}"
            f"{bound:>11,.0f}{med[n]['charrnn'] / bound:>10.3g}"
        )
    if of_kind("score"):
        lines += ["", f"{'scoring':<28}{'charrnn c/s':>12}{'torch c/s':>12}{'ratio':>7}"]
    for c in of_kind("score"):
        n = c["name"]
        lines.append(f"{n:<28}{fmt(med[n]['charrnn']):>12}{fmt(torch_med(n)):>12}{fmt(ratio(n), '.2f'):>7}")
    for c in of_kind("score"):
        # forward only against training, the same model in the same run: parallel streams are
        # the forward a user runs at full batch (exact scoring is one stream, a different regime)
        trained = [t["name"] for t in of_kind("train") if t["cfg"] == c["cfg"]]
        if c["streams"] > 1 and trained:
            per = {s: med[c["name"]][s] / med[trained[0]][s] for s in sides}
            lines.append(
                f"{'forward / training':<28}{per['charrnn']:>12.2f}{fmt(per.get('torch'), '.2f'):>12}"
                f"{fmt(per['charrnn'] / per['torch'] if has_torch else None, '.2f'):>7}"
            )
    if results["memory"]:
        lines += [
            "",
            f"{'training memory':<28}{'peak RSS MiB':>13}{'torch':>8}{'step MiB':>10}{'torch':>8}"
            f"{'saved B/c':>11}{'torch':>8}",
        ]
    for name, mem in results["memory"].items():
        c, t = mem["charrnn"], mem.get("torch")

        def col(d, key, spec):
            return fmt(d[key] if d else None, spec)

        lines.append(
            f"{name:<28}{c['rss_peak']:>13,.0f}{col(t, 'rss_peak', ',.0f'):>8}"
            f"{c['rss_peak'] - c['rss_before']:>10,.0f}"
            f"{fmt(t and t['rss_peak'] - t['rss_before'], ',.0f'):>8}"
            f"{c['saved_per_char']:>11,.0f}{col(t, 'saved_per_char', ',.0f'):>8}"
        )
    if "startup" in results:
        lines += ["", f"{'start-up':<34}{'median s':>9}{'min s':>8}{'max s':>8}{'cpu s':>8}"]
    for name, t in results.get("startup", {}).items():
        w = t["wall"]
        lines.append(
            f"{name:<34}{statistics.median(w):>9.3f}{min(w):>8.3f}{max(w):>8.3f}{statistics.median(t['cpu']):>8.3f}"
        )
    lines += [
        "",
        "c/s: characters per second. ratio: charrnn / torch. MFLOP/c: matrix-product FLOPs per training",
        "character; %pk: chars/s x FLOPs/char / numpy matmul peak. bound: chars/s if every weight used were",
        "read once per step at the measured read bandwidth. forward / training: 64-stream scoring c/s over",
        "training c/s of the same model. step MiB: peak RSS minus RSS before the first step. saved B/c:",
        "bytes the forward keeps for backward, per character. start-up: wall-clock seconds of a fresh",
        "process from spawn to exit over --startup-runs runs; cpu s: the median CPU time it used.",
    ]
    return "\n".join(lines)


def _torch_version() -> str:
    import torch

    return torch.__version__


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, help="text file to train and score on")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS / torch threads")
    p.add_argument("--rounds", type=int, default=5, help="alternating repetitions (medians reported)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--quick", action="store_true", help="tiny models, one round: checks the script runs")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--verbose", action="store_true", help="time every measurement on stderr")
    p.add_argument("--json", type=Path, help="also write the raw measurements here")
    p.add_argument(
        "--only", action="append", choices=PATHS, metavar="PATH",
        help=f"measure only this path (repeatable; one of {', '.join(PATHS)}; default: all)",
    )  # fmt: skip
    p.add_argument("--startup-runs", type=int, default=9, help="fresh processes per start-up command")
    p.add_argument("--worker", choices=["charrnn", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        if args.worker == "torch":
            import torch_baseline

            torch_baseline.set_threads(args.threads)
        side = CharrnnSide if args.worker == "charrnn" else TorchSide
        serve(side(args.workdir, args.threads), args.workdir, args.min_time)
        return
    if args.corpus is None:
        p.error("--corpus is required")
    if args.quick:
        args.rounds, args.min_time = min(args.rounds, 1), min(args.min_time, 0.05)
        args.startup_runs = min(args.startup_runs, 2)
    args.only = args.only or list(PATHS)
    sides = ["charrnn"] + ([] if args.no_torch or not torch_available() else ["torch"])
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        workdir = Path(tmp)
        vocab = prepare_data(args.corpus, workdir, *((20_000, 400) if args.quick else (400_000, 3000)))
        todo = [c for c in cases(*vocab, quick=args.quick) if c["kind"] in args.only]
        results = run_all(args, workdir, todo, sides)
    print(report(results, todo, sides, args, vocab))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
