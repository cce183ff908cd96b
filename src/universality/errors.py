"""The one exception users see: every bad input raises `UniversalityError` with a one-line message."""

__all__ = ["UniversalityError"]


class UniversalityError(ValueError):
    """A problem with the user's input, described in one line that names the fix."""
