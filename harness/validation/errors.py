"""The one kind of error validation raises: a bad input, said in one line."""

from __future__ import annotations


class InputError(ValueError):
    """A bad input: one line naming the key and the fix."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
