"""The errors meant for users. The CLI prints them as one line and exits 2; every other exception is
a bug and keeps its traceback.

They live in ``features``, the lowest package, so that every package can raise them.
"""

from __future__ import annotations

from pydantic import ValidationError


class SendwiseError(Exception):
    """Base of every error a user can act on; its message names what was wrong and what was expected."""


class InputError(SendwiseError, ValueError):
    """An argument, option, setting or file content that is not what was expected."""


class NotFoundError(SendwiseError, LookupError):
    """Something named by the user (a file, model, experiment, alias) that does not exist."""


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line, ``field.path: message; ...``, for a settings file's error message."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors())
