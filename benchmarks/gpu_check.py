"""`make gpu-check`: the GPU tests, then charrnn on CuPy beside PyTorch's cuDNN nn.LSTM on the
same GPU. Needs an NVIDIA GPU, CuPy, PyTorch with CUDA, numpy, click, tqdm and pytest; no network,
no install: it runs the checkout as it is. At most about 5 minutes (TOTAL_SECONDS).

    PYTHONPATH=. python benchmarks/gpu_check.py           what `make gpu-check` runs
    PYTHONPATH=. python benchmarks/gpu_check.py --quick   tiny sizes, to check the script itself

1. tests/test_gpu.py under pytest: gradient checks on the GPU (float64), CPU against GPU on the
   same float32 weights, the step path against the training path, a GPU-trained checkpoint used
   on the CPU, exact resume on the GPU. Skips are listed with their reasons.
2. The benchmark: LSTM, one-hot input, vocabulary 96, float32, state carried between windows.
     training   chars/s at 2x512 and 3x1024, batch 128, seq 100: loss_and_grads, clipping at 5,
                Adam, as `charrnn train` steps (PyTorch: benchmarks/torch_baseline.Trainer, cuDNN
                with TF32 off, so both sides compute in float32 as CuPy does by default; 3x1024 is
                also measured with cuDNN's default, TF32 on)
     sampling   chars/s at batch 1, 2x512, temperature 1: charrnn's `generate` (each character
                comes to the host, as `charrnn sample` prints it) against torch_baseline.sample
                (multinomial on the GPU)
     scoring    chars/s of 2x512 with 64 streams (200-character warm-up) and exact (one stream),
                both sides on the same windows (charrnn.scoring.window_len)
     memory     peak GPU memory of each part: CuPy's memory pool (bytes it holds), PyTorch's
                torch.cuda.max_memory_reserved
     array code charrnn's training at the larger size and its sampling again with the fused step
                kernels off (charrnn/gpu_kernels.py), so one run shows what they gain
   Every measurement runs in its own process under a hard time limit, so a crash, a hang or a
   missing package costs only its own line; each part's raw output is printed before the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench import model_cfg, score_rows, timed

ROOT = Path(__file__).resolve().parent.parent
TOTAL_SECONDS = 290  # the whole check, tests included
TESTS_SECONDS = 150
V = 96  # printable ASCII and the newline
LR, CLIP, WARMUP = 2e-3, 5.0, 200
CPU_LSTM_2X512 = 5_032  # chars/s, charrnn training on 2 CPU cores, batch 64 (docs/BENCHMARKS.md)

FULL = {"batch": 128, "seq": 100, "train": [(2, 512), (3, 1024)], "other": (2, 512), "seconds": 4.0}
QUICK = {"batch": 8, "seq": 10, "train": [(1, 32), (2, 64)], "other": (1, 32), "seconds": 0.3}


def parts(sizes: dict) -> list[tuple[str, int]]:
    """(part, time limit in seconds), the issue's targets first: what a short budget keeps."""
    (l1, h1), (l2, h2) = sizes["train"]
    big, small = f"train {l2}x{h2}", f"train {l1}x{h1}"
    return [
        (f"ours {big}", 60),
        (f"torch {big}", 45),
        ("ours sample", 30),
        ("torch sample", 30),
        ("ours score 64", 30),
        ("torch score 64", 30),
        ("ours score exact", 30),
        ("torch score exact", 30),
        (f"ours {small}", 30),
        (f"torch {small}", 30),
        (f"torch {big} tf32", 30),
        (f"ours {big} array-code", 45),
        ("ours sample array-code", 30),
    ]


# ---------------------------------------------------------------------------- one part, in a child


def _ids(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, shape)


def _sized(run, n0: int, seconds: float, n_max: int) -> dict:
    """chars/s of run(n) (which processes n characters and waits for the device): a warm-up and a
    calibration at n0, then one run sized to take about `seconds`."""
    run(n0)
    start = time.perf_counter()
    run(n0)
    n = int(min(n_max, max(n0, n0 * seconds / (time.perf_counter() - start))))
    start = time.perf_counter()
    run(n)
    return {"chars": n, "chars_per_s": n / (time.perf_counter() - start)}


def _ours_model(layers: int, hidden: int):
    import cupy

    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN

    cfg = ModelConfig(vocab_size=V, hidden_size=hidden, num_layers=layers, cell="lstm", embedding_size=0)
    return CharRNN.create(cfg, seed=0).to(cupy)


def _ours_memory() -> dict:
    import cupy

    cupy.cuda.Device().synchronize()
    return {"peak_mib": cupy.get_default_memory_pool().total_bytes() / 2**20}


def _torch_model(layers: int, hidden: int):
    import torch
    import torch_baseline

    torch.backends.cudnn.allow_tf32 = False
    return torch_baseline.build(model_cfg("lstm", layers, hidden, V)).to("cuda")


def _torch_memory() -> dict:
    import torch

    torch.cuda.synchronize()
    return {"peak_mib": torch.cuda.max_memory_reserved() / 2**20}


def ours_train(sizes: dict, layers: int, hidden: int) -> dict:
    from charrnn.optim import Adam, clip_grad_norm

    model = _ours_model(layers, hidden)
    adam = Adam(model.params)
    ids = _ids((sizes["batch"], sizes["seq"] + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    state, losses = None, []

    def step():
        nonlocal state
        loss, grads, state = model.loss_and_grads(x, y, state)
        losses.append(loss)
        clip_grad_norm(grads, CLIP)  # syncs once: the norm comes back
        adam.update(model.params, grads, LR)

    for _ in range(2):  # warm-up: CuPy compiles its kernels on first use
        step()
    r = timed(step, sizes["batch"] * sizes["seq"], sizes["seconds"])
    speed = {"chars_per_s": r["chars"] / r["seconds"], "steps": len(losses), "last_loss": losses[-1]}
    return speed | _ours_memory()


def torch_train(sizes: dict, layers: int, hidden: int, tf32: bool = False) -> dict:
    import torch
    import torch_baseline

    torch.backends.cudnn.allow_tf32 = tf32
    trainer = torch_baseline.Trainer(model_cfg("lstm", layers, hidden, V), LR, CLIP, device="cuda")
    ids = _ids((sizes["batch"], sizes["seq"] + 1))
    x, y = np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])
    for _ in range(2):
        trainer.step(x, y)
    r = timed(lambda: trainer.step(x, y), sizes["batch"] * sizes["seq"], sizes["seconds"])
    speed = {"chars_per_s": r["chars"] / r["seconds"], "last_loss": trainer.step(x, y)}
    return speed | _torch_memory()


def ours_sample(sizes: dict) -> dict:
    from charrnn.config import SampleOptions
    from charrnn.sampling import generate
    from charrnn.vocab import Vocab

    model = _ours_model(*sizes["other"])
    vocab = Vocab.from_text("\n" + "".join(map(chr, range(32, 127))))
    assert len(vocab) == V

    def run(n):
        for _ in generate(model, vocab, SampleOptions(length=n, temperature=1.0, seed=0)):
            pass

    return _sized(run, 50, sizes["seconds"], 200_000) | _ours_memory()


def torch_sample(sizes: dict) -> dict:
    import torch_baseline

    model = _torch_model(*sizes["other"])
    speed = _sized(lambda n: torch_baseline.sample(model, n, 1), 50, sizes["seconds"], 200_000)
    return speed | _torch_memory()


def _score_n0(streams: int) -> int:
    """Characters for which score_ids uses all `streams` (segments of at least 4 warm-ups)."""
    return 3_000 if streams == 1 else streams * 4 * WARMUP + WARMUP + 1


def ours_score(sizes: dict, streams: int) -> dict:
    from charrnn.scoring import score_ids

    model = _ours_model(*sizes["other"])
    ids = _ids(5_000_000, seed=1)

    def run(n):
        _, _, used = score_ids(model, ids[:n], streams, WARMUP, workers=1, show_progress=False)
        assert used == streams, used

    return _sized(run, _score_n0(streams), sizes["seconds"], len(ids)) | _ours_memory()


def torch_score(sizes: dict, streams: int) -> dict:
    import torch_baseline

    from charrnn.scoring import window_len

    model = _torch_model(*sizes["other"])
    ids = _ids(5_000_000, seed=1)

    def run(n):
        rows, counted = score_rows(ids[:n], streams, WARMUP)
        torch_baseline.score(model, rows, counted, window_len(V, len(rows)))

    return _sized(run, _score_n0(streams), sizes["seconds"], len(ids)) | _torch_memory()


def run_part(name: str, sizes: dict) -> dict:
    if name.endswith(" array-code"):  # cells.py's array code, as before the fused kernels
        from charrnn import gpu_kernels

        gpu_kernels.for_module = lambda xp: None
        name = name.removesuffix(" array-code")
    side, kind, *rest = name.split()
    if kind == "train":
        layers, hidden = map(int, rest[0].split("x"))
        if side == "ours":
            return ours_train(sizes, layers, hidden)
        return torch_train(sizes, layers, hidden, tf32=rest[1:] == ["tf32"])
    if kind == "sample":
        return ours_sample(sizes) if side == "ours" else torch_sample(sizes)
    streams = 1 if rest == ["exact"] else int(rest[0])
    return ours_score(sizes, streams) if side == "ours" else torch_score(sizes, streams)


def environment() -> dict:
    """Versions and the device, each guarded: a missing package is a line, not a failure."""
    env = {"python": sys.version.split()[0], "numpy": np.__version__}

    def cupy():
        return importlib.import_module("cupy")

    def torch():
        return importlib.import_module("torch")

    probes = {
        "cupy": lambda: cupy().__version__,
        "cuda runtime": lambda: cupy().cuda.runtime.runtimeGetVersion(),
        "cuda driver": lambda: cupy().cuda.runtime.driverGetVersion(),
        "gpu": lambda: cupy().cuda.runtime.getDeviceProperties(0)["name"].decode(),
        "torch": lambda: torch().__version__,
        "torch cuda": lambda: torch().version.cuda,
        "cudnn": lambda: torch().backends.cudnn.version(),
    }
    for key, probe in probes.items():
        try:
            env[key] = probe()
        except Exception as e:
            env[key] = f"unavailable ({type(e).__name__}: {e})"
    return env


# ---------------------------------------------------------------------------- the parent


def _run(cmd: list[str], limit: float, capture: bool) -> tuple[int | None, str]:
    """Run cmd with a hard limit; -> (exit status or None on timeout, output if captured)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, timeout=limit, text=True, capture_output=capture, stdin=subprocess.DEVNULL
        )
        return done.returncode, (done.stdout or "") + (done.stderr or "")
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        err = e.stderr or ""
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
        return None, out + err


def fmt(x, spec=",.0f") -> str:
    return "-" if x is None else format(x, spec)


def table(results: dict, sizes: dict) -> str:
    (l1, h1), (l2, h2) = sizes["train"]
    b, s = sizes["batch"], sizes["seq"]
    lo, ho = sizes["other"]
    rows = [
        (f"training LSTM {l1}x{h1}, batch {b} seq {s}", f"train {l1}x{h1}", ""),
        (f"training LSTM {l2}x{h2}, batch {b} seq {s}", f"train {l2}x{h2}", ">= 0.5x"),
        (f"sampling LSTM {lo}x{ho}, batch 1", "sample", ">= 1.0x"),
        (f"scoring LSTM {lo}x{ho}, 64 streams", "score 64", ">= 1.0x"),
        (f"scoring LSTM {lo}x{ho}, exact", "score exact", ">= 1.0x"),
    ]
    lines = [
        "| chars/s | charrnn (CuPy) | PyTorch cuDNN | ratio | target | charrnn peak MiB | PyTorch peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key, target in rows:
        ours, theirs = results.get(f"ours {key}") or {}, results.get(f"torch {key}") or {}
        a, t = ours.get("chars_per_s"), theirs.get("chars_per_s")
        ratio = f"{a / t:.2f}x" if a and t else "-"
        lines.append(
            f"| {label} | {fmt(a)} | {fmt(t)} | {ratio} | {target} | "
            f"{fmt(ours.get('peak_mib'))} | {fmt(theirs.get('peak_mib'))} |"
        )

    def speed(part):
        return (results.get(part) or {}).get("chars_per_s")

    tf32, ours_big, ours_small = (
        speed(f"torch train {l2}x{h2} tf32"),
        speed(f"ours train {l2}x{h2}"),
        speed(f"ours train {l1}x{h1}"),
    )
    notes = [
        f"PyTorch cuDNN with TF32 (its default) at {l2}x{h2}: {fmt(tf32)} chars/s"
        + (f"; charrnn / that = {ours_big / tf32:.2f}x" if tf32 and ours_big else ""),
    ]
    for label, part in ((f"training {l2}x{h2}", f"train {l2}x{h2}"), ("sampling", "sample")):
        fused, array = speed(f"ours {part}"), speed(f"ours {part} array-code")
        notes.append(
            f"charrnn {label} with the array code instead of the fused step kernels: {fmt(array)} chars/s"
            + (f"; fused / array code = {fused / array:.2f}x" if fused and array else "")
        )
    if sizes is FULL and ours_small:
        notes.append(
            f"charrnn {l1}x{h1} on the GPU / on 2 CPU cores ({CPU_LSTM_2X512:,} chars/s at batch 64, "
            f"docs/BENCHMARKS.md): {ours_small / CPU_LSTM_2X512:.0f}x (target >= 50x)"
        )
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # a child's one measurement
    ap.add_argument("--skip-tests", action="store_true", help="only the benchmark")
    ap.add_argument("--json", type=Path, help="also write every result to this file")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.part:
        print("RESULT " + json.dumps(run_part(args.part, sizes)), flush=True)
        return 0

    deadline = time.monotonic() + TOTAL_SECONDS
    print("== environment", flush=True)
    env = environment()
    for key, value in env.items():
        print(f"{key:<14} {value}", flush=True)

    status = 0
    if not args.skip_tests:
        print(f"\n== tests/test_gpu.py (limit {TESTS_SECONDS} s)", flush=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--durations=5"]
        # the test of this script would run the benchmark below a second time, at tiny sizes
        cmd += ["-k", "not test_gpu_check", "tests/test_gpu.py"]
        code, _ = _run(cmd, TESTS_SECONDS, capture=False)
        print(f"pytest: {'timed out' if code is None else f'exit status {code}'}", flush=True)
        status = 1 if code != 0 else 0

    results: dict = {}
    for name, limit in parts(sizes):
        left = deadline - time.monotonic()
        print(f"\n== {name} (limit {min(limit, max(0, left - 5)):.0f} s)", flush=True)
        if left < 15:
            print("skipped: the time budget of the check is spent", flush=True)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name] + (
            ["--quick"] if args.quick else []
        )
        code, out = _run(cmd, min(limit, left - 5), capture=True)
        print(out.rstrip() or "(no output)", flush=True)
        found = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if code == 0 and found:
            results[name] = json.loads(found[-1][len("RESULT ") :])
        else:
            print(f"failed: {'timed out' if code is None else f'exit status {code}'}", flush=True)
            status = 1

    print(f"\n== table ({env.get('gpu')}, float32, LSTM, vocabulary {V})\n", flush=True)
    print(table(results, sizes), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
