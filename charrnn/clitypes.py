"""click parameter types and checks: every command-line value is checked here, before any work
starts, so bad values exit with status 2 and click's usage message."""

from __future__ import annotations

import glob
import math
import os
import re
from pathlib import Path

import click

from .mpienv import launched_size


class FiniteFloat(click.ParamType):
    """A float in [lo, hi] (open ends when asked) that is never nan or inf: click's FloatRange
    lets nan through because every comparison with nan is false."""

    name = "number"

    def __init__(
        self, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
    ):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            x = value
        else:
            try:
                x = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        too_low = self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo)
        too_high = self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi)
        if too_low or too_high:
            lo = "-inf" if self.lo is None else f"{self.lo:g}"
            hi = "inf" if self.hi is None else f"{self.hi:g}"
            bounds = ("(" if self.lo_open else "[") + f"{lo}, {hi}" + (")" if self.hi_open else "]")
            self.fail(f"{value!r} is not in the range {bounds}", param, ctx)
        return x


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class Duration(click.ParamType):
    """A time span: seconds as a number, or '90s', '20m', '2h', '1h30m'."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            try:
                seconds = float(text)
            except ValueError:
                parts = _DURATION.findall(text)
                if not parts or "".join(n + u for n, u in parts) != text:
                    self.fail(f"{value!r} is not a duration like 90s, 20m, 2h or 1h30m", param, ctx)
                seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if not math.isfinite(seconds) or seconds < 0 or seconds > 366 * 86400:
            self.fail(f"{value!r} is not a duration between 0 and a year", param, ctx)
        return seconds


class CorpusPath(click.ParamType):
    """A corpus argument: an existing file or directory, or a glob pattern (quoted, so that the
    shell leaves it to us) that matches at least one path. data.expand_paths lists the files."""

    name = "path"

    def convert(self, value, param, ctx):
        text = str(value)
        if os.path.exists(text) or (glob.has_magic(text) and glob.glob(text, recursive=True)):
            return Path(text)
        what = "matches no file" if glob.has_magic(text) else "does not exist"
        self.fail(f"{text!r} {what}", param, ctx)


_ESCAPE = re.compile(r"\\(?:([ntr\\])|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


class EscapedText(click.ParamType):
    """Text in which \\n, \\t, \\r, \\\\, \\xNN, \\uNNNN and \\UNNNNNNNN stand for their characters
    (so a shell argument can hold a newline); everything else, non-ASCII text included, stays as
    typed. Python's unicode_escape would also decode the UTF-8 bytes of non-ASCII characters
    one by one, garbling them."""

    name = "text"

    def convert(self, value, param, ctx):
        def replace(m: re.Match) -> str:
            if m[1]:
                return _SIMPLE_ESCAPES[m[1]]
            code = int(m[2] or m[3] or m[4], 16)
            if code > 0x10FFFF or 0xD800 <= code < 0xE000:
                self.fail(f"{m[0]!r} is not a character", param, ctx)
            return chr(code)

        return _ESCAPE.sub(replace, str(value))


def one_process_per_rank(ctx, param, value: int) -> int:
    """The --workers callback: under MPI more processes are more ranks."""
    if value > 1 and launched_size() > 1:
        raise click.BadParameter(
            "cannot be combined with mpiexec: each rank is one process (start more ranks instead)"
        )
    return value
