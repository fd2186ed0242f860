"""charrnn: character-level RNN / LSTM / GRU language models in NumPy.

from charrnn import CharRNN, ModelConfig
model = CharRNN.create(ModelConfig(vocab_size=65, cell="lstm", hidden_size=256, num_layers=2))
loss, grads, state = model.loss_and_grads(x, y, state)      # x, y: (N, T) int ids
logits, state = model.step(ids, state)                       # one character per stream
"""

from . import mpienv  # noqa: F401 (first: under an MPI launcher it sets BLAS threads before NumPy loads)
from .config import ModelConfig, TrainConfig
from .errors import CharRNNError, CheckpointError
from .model import CharRNN, param_shapes
from .optim import Adam, LRSchedule, clip_grad_norm
from .vocab import Vocab

__all__ = [
    "Adam",
    "CharRNN",
    "CharRNNError",
    "CheckpointError",
    "LRSchedule",
    "ModelConfig",
    "TrainConfig",
    "Vocab",
    "clip_grad_norm",
    "param_shapes",
]
__version__ = "0.1.0"
