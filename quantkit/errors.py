"""Errors a user can cause. The CLI prints each as one line on stderr and exits non-zero.

Anything that is not a QuantkitError is a bug and keeps its traceback.
"""
from __future__ import annotations


class QuantkitError(Exception):
    """A problem with the user's input or environment: one line naming the problem and the fix."""

    exit_code = 1


class SourceError(QuantkitError):
    """The source checkpoint cannot be used."""


class OutputError(QuantkitError):
    """The output location cannot be used."""


class InputError(QuantkitError):
    """A file, text or option given by the user is wrong."""


class Interrupted(QuantkitError):
    """Ctrl-C or SIGTERM during work; the partial output has been removed."""

    exit_code = 130
