"""Bad input: the one error type for it, the checks that raise it, and how a command line reports it.

A :class:`UserError` names the problem (the value, and where it came from: a setting, a file and line, a qid
and docno) and the fix. It is a ``ValueError``, so ``except ValueError`` keeps working. The command lines
(``python -m pyterrier_matroyshka``, ``python -m train``) print it as one line and exit with code 2; any
other exception is a bug and keeps its traceback. ``--debug`` shows the traceback of a user error too.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

#: exit code of a command stopped by bad input (argparse uses the same for bad arguments)
USAGE_EXIT = 2


class UserError(ValueError):
    """Input that cannot be used as given: the message says what, where, and how to fix it."""


#: what a command line reports as one line instead of a traceback: bad input and files that are not there
USER_MISTAKES = (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def check_int(name: str, value, minimum: int = 1, maximum: Optional[int] = None, *,
              optional: bool = False) -> Optional[int]:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (``None`` passes when ``optional``); ``name`` says
    which setting it is in the error."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        span = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise UserError(f"{name} must be {span}, got {value}")
    return int(value)


def check_real(name: str, value, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
               above_minimum: bool = False, optional: bool = False) -> Optional[float]:
    """``value`` as a finite ``float`` in ``[minimum, maximum]`` (``(minimum, maximum]`` with
    ``above_minimum``); ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    low_ok = minimum is None or (value > minimum if above_minimum else value >= minimum)
    if not math.isfinite(value) or not low_ok or (maximum is not None and value > maximum):
        low = "" if minimum is None else (f"> {minimum:g}" if above_minimum else f">= {minimum:g}")
        high = "" if maximum is None else f"<= {maximum:g}"
        span = " and ".join(p for p in (low, high) if p) or "finite"
        raise UserError(f"{name} must be {span}, got {value!r}")
    return value


def text_problem(value) -> Optional[str]:
    """Why ``value`` cannot be tokenized as text (not a string, or a lone UTF-16 surrogate in it), or ``None``."""
    if not isinstance(value, str):
        hint = " (a NaN here usually means a missing text; fill or drop it first)" if value is None or (
            isinstance(value, float) and math.isnan(value)) else ""
        return f"is {type(value).__name__} {value!r:.60}, not a string{hint}"
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"holds a lone surrogate {value[err.start]!r} at character {err.start}, which is not text "
                "(a broken decode); clean it, e.g. text.encode('utf-8', 'replace').decode('utf-8')")
    return None


def numbered_lines(path: Union[str, Path], opener: Optional[Callable] = None) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, from 1; a byte-order mark at the start is dropped, and
    bytes that are not UTF-8 raise a :class:`UserError` naming the file and line. ``opener(path)`` gives
    the binary stream (default ``open(path, 'rb')``, e.g. ``gzip.open`` for ``.gz``)."""
    with (opener or open)(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}, line {number}: byte {raw[err.start]:#04x} at column {err.start + 1} is "
                                "not UTF-8; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


#: what a Hugging Face hub id looks like: ``name`` or ``namespace/name``
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_local(path, what: str = "model folder") -> str:
    """``path`` as a string, refused with a clear error when it names a local folder that is not there
    (a path that starts with ``/``, ``.`` or ``~``, or has more parts than a hub id ``org/name``) or a
    file; a string that may be a hub id passes."""
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise UserError(f"{what}: expected a folder or hub id, got {path!r}")
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise UserError(f"{what} {path} is a file; give the folder that holds it")
    if not _HUB_ID.match(path) or path.startswith((".", "~")) or ".." in path:
        raise UserError(f"{what} {path} does not exist (looked in {os.path.abspath(os.path.expanduser(path))})")
    return path


@contextlib.contextmanager
def unreadable(source, what: str, *errors: type):
    """Turn ``errors`` raised inside the block (a truncated safetensors file, malformed JSON, ...) into a
    :class:`UserError` saying which of ``source``'s files cannot be read."""
    try:
        yield
    except UserError:
        raise
    except errors as err:
        raise UserError(f"{source}: cannot read its {what} ({' '.join(str(err).split())[:240]}): the files are "
                        "damaged or incomplete") from err


# ------------------------------------------------------------------------------------------ command lines

class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (files that are not there as 'no such file: PATH')."""
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.strerror or type(err).__name__}: {err.filename}"
    else:
        text = str(err) if not isinstance(err, KeyError) else str(err.args[0] if err.args else err)
    return " ".join(text.split())


def run_cli(main: Callable[[Sequence[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
            prog: str = "error") -> int:
    """Run a command line's ``main(argv)``: bad input (:data:`USER_MISTAKES`) becomes one line on stderr and
    exit code 2 (``--debug`` anywhere in ``argv`` re-raises it); any other exception propagates, traceback
    and all."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv) or 0
    except USER_MISTAKES as err:
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {one_line(err)} (--debug for the traceback)", file=sys.stderr)
        return USAGE_EXIT
