"""The array-module seam (charrnn/backend.py) and the engine on a GPU.

The first part runs everywhere: the seam on NumPy, `--device` without CuPy, the GPU's one-hot
scatter-add computed by NumPy, and checkpoints saved from arrays that only look like CuPy's
(a stand-in whose type lives in a module named "cupy" and that refuses implicit conversion).
The second part needs CuPy and a CUDA device (the `cp` fixture skips it, saying which is
missing): gradient checks on the GPU in float64, CPU against GPU on the same float32 weights,
the step path against the training path, a GPU-trained checkpoint used on the CPU, and exact
resume on the GPU. `make gpu-check` runs this file on a lent GPU.
`PYTHONPATH=tests/cupy_standin` runs the second part against a NumPy stand-in for CuPy, which
checks the tests and the host/device discipline, not CuPy (see its docstring).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from test_cells import CASES, make_case
from test_cli import TINY, assert_same_training_state, make_text, run
from test_model import CELL_CASES, GRAD_CASES, V, make_model, random_ids, random_state

from charrnn import backend
from charrnn import model as model_module
from charrnn.backend import array_module, resolve_device, to_device, to_host, uniform
from charrnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from charrnn.config import ModelConfig
from charrnn.data import Batches
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, onehot_scatter_add_rows, scatter_add_rows
from charrnn.optim import Adam, clip_grad_norm
from charrnn.parallel import parallel_or_model
from charrnn.prepare import training_speed

INSTALL = "pip install -e '.[gpu]'"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def no_cupy(monkeypatch):
    """`import cupy` fails, as on a machine without it (a None entry in sys.modules does that)."""
    monkeypatch.setitem(sys.modules, "cupy", None)


class FakeDeviceArray:
    """Stands in for a cupy.ndarray: its type's module is "cupy" and, like CuPy, it refuses to
    become a NumPy array implicitly, so only backend.to_host can bring it to the host."""

    __module__ = "cupy"

    def __init__(self, host: np.ndarray):
        self.host = host
        self.shape, self.dtype = host.shape, host.dtype

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")


@pytest.fixture
def fake_cupy(monkeypatch):
    module = types.ModuleType("cupy")
    module.asnumpy = lambda a: a.host.copy()
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


# ---------------------------------------------------------------- the seam on the CPU


def test_array_module_is_numpy_for_host_values():
    assert array_module(np.zeros(3), np.float32(1.0), 2.0, None) is np
    assert array_module() is np


def test_array_module_recognises_device_arrays(fake_cupy):
    assert array_module(np.zeros(2), FakeDeviceArray(np.zeros(2))) is fake_cupy
    with pytest.raises(TypeError):
        np.asarray(FakeDeviceArray(np.zeros(2)))  # so a missed to_host cannot pass silently


def test_host_and_numpy_moves_never_copy_host_arrays():
    a, b = np.ones(3), np.zeros((2, 2))
    tree = {"p": a, "state": ((b,), (b, a)), "t": np.array(3), "none": None}
    for moved in (to_host(tree), to_device(tree, np)):
        assert moved["p"] is a and moved["state"][1][0] is b and moved["none"] is None
        assert isinstance(moved["state"], tuple) and isinstance(moved["state"][1], tuple)


def test_to_host_copies_device_arrays(fake_cupy):
    a = np.arange(6.0).reshape(2, 3)
    host = to_host({"w": FakeDeviceArray(a), "state": ((FakeDeviceArray(a),),)})
    assert type(host["w"]) is np.ndarray and np.array_equal(host["w"], a)
    assert np.array_equal(host["state"][0][0], a)


def test_cpu_and_auto_without_cupy_are_numpy(no_cupy):
    assert resolve_device("cpu") is np
    assert resolve_device("auto") is np
    assert backend.device_label(np) == "cpu"


def test_gpu_without_cupy_is_one_line_naming_the_install_command(no_cupy):
    with pytest.raises(CharRNNError) as e:
        resolve_device("gpu")
    message = str(e.value)
    assert INSTALL in message and "\n" not in message
    assert "cupy" in message.lower()


def test_cpu_dropout_numbers_are_the_generators_own():
    # the CPU path of backend.uniform must be what model.py drew before the seam, bit for bit
    got = uniform(np.random.default_rng(5), (3, 4), np)
    assert np.array_equal(got, np.random.default_rng(5).random((3, 4), dtype=np.float64))


def test_clip_grad_norm_is_the_pre_seam_formula_bit_for_bit():
    rng = np.random.default_rng(0)
    grads = {f"g{k}": rng.normal(size=(40, 30)).astype(np.float32) for k in range(12)}
    old = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads.values()))
    assert clip_grad_norm(grads, 0.0) == old
    assert type(clip_grad_norm(grads, 0.0)) is float


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block", [1 << 24, 50])  # one product; 50 // 7 = 7 positions per block
def test_onehot_scatter_add_equals_the_cpu_scatter_add(monkeypatch, dtype, block):
    # the GPU's formula, computed by NumPy: same sums as the CPU's sort-and-reduce
    monkeypatch.setattr(model_module, "ONEHOT_ELEMENTS", block)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, 60)
    ids[ids == 3] = 4  # an id that never occurs keeps a zero row
    rows = rng.normal(size=(60, 5)).astype(dtype)
    want = scatter_add_rows(ids, rows, V)
    got = onehot_scatter_add_rows(np, ids, rows, V)
    assert got.dtype == dtype and not got[3].any()
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_a_model_on_a_device_never_starts_worker_processes(fake_cupy):
    cfg = ModelConfig(vocab_size=V, hidden_size=8)
    host = CharRNN.create(cfg)
    on_device = CharRNN(cfg, {k: FakeDeviceArray(p) for k, p in host.params.items()})
    assert on_device.xp is fake_cupy
    with parallel_or_model(on_device, 16, 4, workers=2) as runner:
        assert runner is on_device


def test_a_checkpoint_saved_from_device_arrays_loads_everywhere(fake_cupy, corpus, tmp_path):
    out = tmp_path / "run"
    assert run("train", corpus, "-o", out, *TINY, "--max-steps", 3, "--device", "cpu").exit_code == 0
    ckpt = load_checkpoint(out / "last.npz")

    def on_device(tree):
        if isinstance(tree, dict):
            return {k: v if k == "t" else on_device(v) for k, v in tree.items()}  # Adam's t is host
        if isinstance(tree, tuple):
            return tuple(on_device(v) for v in tree)
        return FakeDeviceArray(tree)

    as_if_gpu = Checkpoint(
        ckpt.model_config,
        on_device(ckpt.params),
        ckpt.vocab,
        ckpt.text_policy,
        ckpt.train_config,
        on_device(ckpt.optimizer),
        on_device(ckpt.hidden),
        ckpt.progress,
    )
    save_checkpoint(tmp_path / "gpu.npz", as_if_gpu)
    back = load_checkpoint(tmp_path / "gpu.npz")
    for name, p in ckpt.params.items():
        assert type(back.params[name]) is np.ndarray and np.array_equal(back.params[name], p), name
    for key, a in ckpt.optimizer.items():
        assert np.array_equal(back.optimizer[key], a), key
    for layer, back_layer in zip(ckpt.hidden, back.hidden):
        assert all(np.array_equal(a, b) for a, b in zip(layer, back_layer))
    result = run("sample", "-c", tmp_path / "gpu.npz", "-n", 50, "--seed", 1, "--device", "cpu")
    assert result.exit_code == 0 and len(result.stdout) == 51, result.output


# ---------------------------------------------------------------- --device on the command line


def start_up_line(stderr: str) -> str:
    """train's summary line (a library may warn on stderr before it)."""
    return next(line for line in stderr.splitlines() if line.startswith("corpus "))


@pytest.mark.parametrize(
    "command",
    [["train", "CORPUS", *TINY, "--max-steps", 1], ["sample", "-n", 5], ["score", "CORPUS"]],
    ids=["train", "sample", "score"],
)
def test_device_gpu_without_cupy_is_an_error_line(no_cupy, corpus, tmp_path, command):
    args = [corpus if a == "CORPUS" else a for a in command]
    if command[0] == "train":
        args += ["-o", tmp_path / "run"]
    else:  # a checkpoint exists, so only the device can fail
        assert run("train", corpus, "-o", tmp_path / "run", *TINY, "--max-steps", 2).exit_code == 0
        args += ["-c", tmp_path / "run"]
    result = run(*args, "--device", "gpu")
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error: --device gpu needs CuPy"), result.stderr
    assert INSTALL in errors[0]
    if command[0] == "train":
        assert not (tmp_path / "run").exists()  # refused before anything was read or written


def test_auto_picks_the_cpu_here_and_says_so(no_cupy, corpus, tmp_path):
    auto = run("train", corpus, "-o", tmp_path / "auto", *TINY, "--max-steps", 4)
    cpu = run("train", corpus, "-o", tmp_path / "cpu", *TINY, "--max-steps", 4, "--device", "cpu")
    assert auto.exit_code == 0 and cpu.exit_code == 0, auto.output
    assert "; device cpu;" in start_up_line(auto.stderr)
    a, b = load_checkpoint(tmp_path / "auto" / "last.npz"), load_checkpoint(tmp_path / "cpu" / "last.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    for command in (["sample", "-n", 20, "--seed", 3], ["score", corpus, "--json"]):
        outputs = [run(*command, "-c", tmp_path / "cpu", "--device", d).stdout for d in ("auto", "cpu")]
        assert outputs[0] == outputs[1] and outputs[0]


# ---------------------------------------------------------------- on a GPU


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy", reason=f"CuPy is not installed (GPU tests need {INSTALL})")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # a CuPy without a driver raises a CUDA runtime error here
        pytest.skip(f"CuPy finds no CUDA device ({e})")
    if count < 1:
        pytest.skip("CuPy finds no CUDA device")
    return cupy


@pytest.mark.parametrize("name", CASES)
def test_gpu_cell_gradients_float64(cp, name, gradcheck):
    case = make_case(name)  # host arrays; the numeric check perturbs these
    rng = np.random.default_rng(1)

    def run_on_gpu():
        d = to_device(case.arrays, cp)
        params = {p: d[p] for p in case.param_names}
        return case.forward(d["xw"], tuple(d[s] for s in case.state_names), **params, **case.kwargs)

    hs, stateT, cache = run_on_gpu()
    assert array_module(hs, *stateT) is cp
    ref_hs, ref_state, _ = case.run()
    np.testing.assert_allclose(to_host(hs), ref_hs, rtol=0, atol=1e-12)
    dhs = rng.normal(size=hs.shape)
    dstate = tuple(rng.normal(size=s.shape) for s in stateT)

    def loss():
        hs, stateT, _ = run_on_gpu()
        total = cp.sum(hs * cp.asarray(dhs)) + sum(cp.sum(s * cp.asarray(d)) for s, d in zip(stateT, dstate))
        return float(total)

    dxw, dstate0, grads = case.backward(cp.asarray(dhs), to_device(dstate, cp), cache)
    analytic = to_host({"xw": dxw, **dict(zip(case.state_names, dstate0)), **grads})
    gradcheck(loss, case.arrays, analytic)


@pytest.mark.parametrize("name", [*CELL_CASES, "lstm-3-peep-embed-dropout", "rnn-2-relu-dropout"])
def test_gpu_model_gradients_float64(cp, name, gradcheck):
    cfg, nonzero_state = GRAD_CASES.get(name, (CELL_CASES.get(name), True))
    host = make_model(**cfg)
    x, y = random_ids((3, 4), 1), random_ids((3, 4), 2)
    state = random_state(host, 3, 3) if nonzero_state else None
    dropout_rng = (lambda: np.random.default_rng(7)) if host.config.dropout else (lambda: None)

    def f():  # reads host.params, which the numeric check perturbs
        gpu = host.to(cp)
        return gpu.loss_and_grads(x, y, to_device(state, cp), dropout_rng())[0]

    gpu = host.to(cp)
    _, grads, new_state = gpu.loss_and_grads(x, y, to_device(state, cp), dropout_rng())
    assert array_module(*grads.values(), *new_state[0]) is cp
    gradcheck(f, host.params, to_host(grads), tol=1e-5)


@pytest.mark.parametrize("name", CELL_CASES)
def test_gpu_matches_cpu_on_the_same_float32_weights(cp, name):
    cfg = ModelConfig(vocab_size=50, hidden_size=64, **CELL_CASES[name])
    host = CharRNN.create(cfg, seed=3)
    gpu = host.to(cp)
    assert gpu.xp is cp and gpu.dtype == np.float32
    x, y = np.random.default_rng(4).integers(0, 50, (2, 8, 20))
    state = random_state(host, 8, 6)

    def close(a, b, what):
        b = np.asarray(b)
        err = np.abs(to_host(a) - b).max() / max(1.0, np.abs(b).max())
        assert err <= 1e-5, f"{what}: {err:.2e}"

    logits, s_gpu = gpu.forward(x, to_device(state, cp))
    ref_logits, s_cpu = host.forward(x, state)
    close(logits, ref_logits, "logits")
    for la, lb in zip(s_gpu, s_cpu):
        for a, b in zip(la, lb):
            close(a, b, "state")
    loss, grads, _ = gpu.loss_and_grads(x, y, to_device(state, cp))
    ref_loss, ref_grads, _ = host.loss_and_grads(x, y, state)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for k in ref_grads:
        close(grads[k], ref_grads[k], k)
    close(gpu.nll(x, y, to_device(state, cp))[0], host.nll(x, y, state)[0], "nll")


@pytest.mark.parametrize("name", CASES)
def test_gpu_cell_step_equals_forward(cp, name):
    case = make_case(name, seed=5, dtype=np.float32)
    d = to_device(case.arrays, cp)
    params = {p: d[p] for p in case.param_names}
    state = tuple(d[s] for s in case.state_names)
    hs, stateT, _ = case.forward(d["xw"], state, **params, **case.kwargs)
    for t in range(len(hs)):
        h, state = case.step(d["xw"][t], state, **params, **case.kwargs)
        np.testing.assert_allclose(to_host(h), to_host(hs[t]), rtol=0, atol=1e-6)
    for s, r in zip(state, stateT):
        np.testing.assert_allclose(to_host(s), to_host(r), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CELL_CASES)
def test_gpu_model_step_equals_training_path(cp, name):
    gpu = make_model(dtype=np.float32, hidden_size=16, **CELL_CASES[name]).to(cp)
    x = random_ids((3, 10), 9)
    logits, final = gpu.forward(x)
    state = None
    for t in range(x.shape[1]):
        step_logits, state = gpu.step(x[:, t], state)
        np.testing.assert_allclose(to_host(step_logits), to_host(logits[:, t]), rtol=0, atol=1e-5)
    for la, lb in zip(state, final):
        for a, b in zip(la, lb):
            np.testing.assert_allclose(to_host(a), to_host(b), rtol=0, atol=1e-5)


def test_gpu_scatter_add_clip_adam_and_dropout(cp):
    rng = np.random.default_rng(2)
    ids, rows = rng.integers(0, V, 500), rng.normal(size=(500, 33))
    got = onehot_scatter_add_rows(cp, cp.asarray(ids), cp.asarray(rows), V)
    np.testing.assert_allclose(to_host(got), scatter_add_rows(ids, rows, V), rtol=1e-12, atol=1e-12)

    grads = {k: rng.normal(size=(20, 10)) for k in "abc"}
    on_gpu = to_device(grads, cp)
    norm = clip_grad_norm(on_gpu, 1.0)
    assert type(norm) is float and norm == pytest.approx(clip_grad_norm(grads, 1.0), rel=1e-12)
    np.testing.assert_allclose(to_host(on_gpu["a"]), grads["a"], rtol=1e-12)

    params = {k: rng.normal(size=(20, 10)) for k in "abc"}
    host_adam, gpu_adam = Adam(params), Adam(to_device(params, cp))
    gpu_params = to_device(params, cp)
    for _ in range(3):
        g = {k: rng.normal(size=(20, 10)) for k in "abc"}
        gpu_adam.update(gpu_params, to_device(g, cp), 1e-2)
        host_adam.update(params, g, 1e-2)
    for k in params:
        np.testing.assert_allclose(to_host(gpu_params[k]), params[k], rtol=1e-12, atol=1e-15)

    a, b = (
        uniform(np.random.default_rng(4), (200, 300), cp),
        uniform(np.random.default_rng(4), (200, 300), cp),
    )
    assert array_module(a) is cp and a.dtype == np.float32 and a.shape == (200, 300)
    assert bool((a == b).all()) and float(a.min()) >= 0.0 and float(a.max()) < 1.0
    assert abs(float(a.mean()) - 0.5) < 0.01
    assert not bool((a == uniform(np.random.default_rng(5), (200, 300), cp)).all())


def test_the_budget_is_timed_on_the_gpu_and_leaves_the_weights_on_the_host(cp):
    model = make_model(cell="gru", dtype=np.float32)
    batches = Batches(random_ids(4_000, seed=2), 8, 16)
    assert training_speed(model, batches, cp) > 0
    assert all(type(p) is np.ndarray for p in model.params.values())


def test_gpu_trained_checkpoint_samples_and_scores_on_the_cpu(cp, corpus, tmp_path):
    out = tmp_path / "gpu"
    result = run("train", corpus, "-o", out, *TINY, "--max-steps", 30, "--eval-every", 10, "--device", "gpu")
    assert result.exit_code == 0, result.output
    assert "; device gpu 0;" in start_up_line(result.stderr)
    ckpt = load_checkpoint(out / "last.npz")
    assert all(type(p) is np.ndarray and p.dtype == np.float32 for p in ckpt.params.values())
    assert ckpt.progress["step"] == 30
    for device in ("gpu", "cpu"):
        sample = run("sample", "-c", out, "-n", 200, "--seed", 1, "--device", device)
        assert sample.exit_code == 0, sample.output
        assert len(sample.stdout) == 201 and set(sample.stdout) <= set(ckpt.vocab.chars), sample.stdout
    scores = {}
    for device in ("gpu", "cpu"):
        for exact in ([], ["--exact"]):
            result = run("score", corpus, "-c", out, "--json", *exact, "--device", device)
            assert result.exit_code == 0, result.output
            scores[device, bool(exact)] = json.loads(result.stdout)["nats_per_char"]
    for exact in (False, True):
        assert scores["gpu", exact] == pytest.approx(scores["cpu", exact], rel=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_resume_is_bitwise_exact_and_may_switch_device(cp, corpus, tmp_path, cell):
    common = [*TINY, "--model", cell, "--dropout", "0.2", "--eval-every", 5, "--save-every", 5]
    # --warmdown 0: a warmdown would anneal the 7-step first run's rates (as in test_cli's resume test)
    common += ["--plateau-patience", 1, "--warmdown", 0, "--device", "gpu"]
    assert run("train", corpus, "-o", tmp_path / "a", *common, "--max-steps", 17).exit_code == 0
    assert run("train", corpus, "-o", tmp_path / "b", *common, "--max-steps", 7).exit_code == 0
    resumed = run(
        "train", corpus, "-o", tmp_path / "b", "--resume", "--max-steps", 17, "-q", "--device", "gpu"
    )
    assert resumed.exit_code == 0, resumed.output
    a, b = load_checkpoint(tmp_path / "a" / "last.npz"), load_checkpoint(tmp_path / "b" / "last.npz")
    assert a.progress["step"] == b.progress["step"] == 17
    assert_same_training_state(a, b)
    # the same run continues on the CPU: a device switch is a resume like any other
    on_cpu = run(
        "train", corpus, "-o", tmp_path / "b", "--resume", "--max-steps", 20, "-q", "--device", "cpu"
    )
    assert on_cpu.exit_code == 0, on_cpu.output
    assert load_checkpoint(tmp_path / "b" / "last.npz").progress["step"] == 20
    # and the other way: a CPU run resumed on the GPU
    cpu_first = [*common[:-2], "--device", "cpu"]
    assert run("train", corpus, "-o", tmp_path / "c", *cpu_first, "--max-steps", 5).exit_code == 0
    on_gpu = run("train", corpus, "-o", tmp_path / "c", "--resume", "--max-steps", 9, "-q", "--device", "gpu")
    assert on_gpu.exit_code == 0, on_gpu.output
    assert load_checkpoint(tmp_path / "c" / "last.npz").progress["step"] == 9


def test_gpu_check_prints_every_part_and_the_table_whatever_fails(tmp_path):
    # here every part fails (no CuPy, no PyTorch); on a GPU machine they measure tiny models
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--skip-tests", "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    sys.path.insert(0, str(script.parent))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    for name, _ in gpu_check.parts(gpu_check.QUICK):
        assert f"== {name} " in out, name
    assert "== table" in out and "| training LSTM 2x64, batch 8 seq 10 |" in out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    # every part either measured something or said why not, and the exit status tells which
    failed = out.count("\nfailed: ")
    assert failed + len(results) == len(gpu_check.parts(gpu_check.QUICK))
    assert done.returncode == (1 if failed else 0)
    assert all(r["chars_per_s"] > 0 for r in results.values())
