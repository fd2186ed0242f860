"""charrnn: character-level RNN / LSTM / GRU language models in NumPy.

The Python API (charrnn/api.py, the README's "Python API"):

    import charrnn
    model = charrnn.load("checkpoints/demo")             # a .npz or a run directory
    print(model.generate("def ", length=200, seed=1))
    print(model.score("import os\\n").bits_per_char)
    charrnn.train("corpus.txt", "checkpoints/run", max_time=60)

The building blocks:

    from charrnn import CharRNN, ModelConfig
    model = CharRNN.create(ModelConfig(vocab_size=65, cell="lstm", hidden_size=256, num_layers=2))
    loss, grads, state = model.loss_and_grads(x, y, state)      # x, y: (N, T) int ids
    logits, state = model.step(ids, state)                       # one character per stream

Names are imported on first use (PEP 562), so `import charrnn` loads neither NumPy nor the
model code.
"""

import importlib

from . import mpienv  # noqa: F401 (first: under an MPI launcher it sets BLAS threads before NumPy loads)

_EXPORTS = {
    "load": "api",
    "Model": "api",
    "train": "api",
    "RunResult": "trainer",
    "Score": "scoring",
    "SampleOptions": "config",
    "Adam": "optim",
    "LRSchedule": "optim",
    "clip_grad_norm": "optim",
    "CharRNN": "model",
    "param_shapes": "model",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "CharRNNError": "errors",
    "CheckpointError": "errors",
    "Vocab": "vocab",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
