"""Typed errors for the data pipeline: each one names the file (or key) at fault and a fix."""

from __future__ import annotations


class DataError(Exception):
    """Base class of every user-facing error raised by the data pipeline."""


class DatasetFormatError(DataError, ValueError):
    """A `.bin`/`.idx` pair exists but is truncated, corrupt or of an unsupported kind."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset prefix has no `.bin` or no `.idx` next to it."""


class DatasetConfigError(DataError, ValueError):
    """The requested dataset (blend weights, sequence length, sample count) cannot be built."""


class TokenizeInputError(DataError, ValueError):
    """Input of the tokenizer CLI is unusable: missing file, unknown format, no text column, bad vocab."""
