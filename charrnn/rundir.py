"""A run directory: what `charrnn train` writes and `--resume` reads back.

last.npz       everything needed to continue exactly (trainer.py says what)
best.npz       the weights with the lowest validation loss so far
metrics.jsonl  one JSON object per evaluation (charrnn plot draws them)
corpus.ids     a memory-mapped corpus's ids, kept between a run and its --resume
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .checkpoint import Checkpoint, clean_stale_temp_files, save_checkpoint
from .errors import CharRNNError

LAST, BEST, METRICS, KEPT_IDS = "last.npz", "best.npz", "metrics.jsonl", "corpus.ids"


def default_out_dir(paths: list[Path]) -> Path:
    return Path("checkpoints") / Path(paths[0]).stem


class RunDir:
    """One run's directory. A rank of an MPI job other than the first writes nothing
    (distributed.RootRunDir)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def prepare(self) -> None:
        """Fail before step 1, not after an hour of training, when checkpoints cannot be
        written; remove the temporary files of saves that a kill interrupted."""
        probe = self.path / f".write-test-{os.getpid()}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
        except OSError as e:
            raise CharRNNError(f"cannot write checkpoints to {self.path}: {e.strerror or e}") from None
        finally:  # a full disk creates the file and then fails to write it
            with contextlib.suppress(OSError):
                probe.unlink()
        clean_stale_temp_files(self.path)

    def save(self, name: str, ckpt: Checkpoint) -> None:
        save_checkpoint(self.path / name, ckpt)

    def has_best(self) -> bool:
        return (self.path / BEST).exists()

    def log_metrics(self, record: dict) -> None:
        """Append one line, whole or not at all: a full disk must not leave half a record for
        the next run to append to."""
        path = self.path / METRICS
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            with open(path, "ab", buffering=0) as f:
                start = f.seek(0, os.SEEK_END)
                try:
                    done = 0
                    while done < len(line):
                        done += f.write(line[done:])
                except OSError:
                    os.ftruncate(f.fileno(), start)
                    raise
        except OSError as e:
            raise CharRNNError(
                f"could not write {path}: {e.strerror or e}; the checkpoints are unchanged"
            ) from None
