"""The one exception users see: every bad input raises `UniversalityError` with a one-line message."""

import reprlib

__all__ = ["UniversalityError", "short_repr"]


class UniversalityError(ValueError):
    """A problem with the user's input, described in one line that names the fix."""


_REPR = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr() takes none
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(value: object) -> str:
    """`repr(value)` for an error message: at most ~80 characters, 3 levels deep, on one line.

    >>> print(short_repr("a" * 100))
    'aaaaaaaaaaaaaaaaaaaaaaaaaaa...aaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    >>> print(short_repr([[[[[1]]]]]), short_repr("[/bold]"))
    [[[[...]]]] '[/bold]'
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose own __repr__ fails: name its type instead
        text = f"<{type(value).__name__}>"
    return text.replace("\n", "\\n")
