"""The one error type of the generation pipelines: a user-facing, single-line message."""

from __future__ import annotations

__all__ = ["GenerateError"]


class GenerateError(ValueError):
    """Bad input to generation/export: the message says what is wrong and what is expected."""
