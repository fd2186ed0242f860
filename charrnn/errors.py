"""The one exception type the CLI turns into `Error: <message>` and exit status 1.

Anything raised as a CharRNNError is an anticipated failure of data or environment (a bad
file, a hostile checkpoint, a full disk): its message is written for the user, on one line."""


class CharRNNError(Exception):
    """A data or runtime error with a user-facing one-line message (exit status 1)."""


class CheckpointError(CharRNNError):
    """A checkpoint file that cannot be loaded or saved; the message names the file and field."""
