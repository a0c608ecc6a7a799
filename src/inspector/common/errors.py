"""The one base class for errors a user can cause and fix: a wrong path, bad data, an invalid setting.

The CLI prints these as one line without a traceback; every other exception is a bug or an environment fault
and keeps its traceback. Subclasses also derive from the builtin they refine (ValueError, FileNotFoundError,
...) where callers already catch that.
"""

from __future__ import annotations


class InspectorError(Exception):
    """A problem the user can fix; the message says what is wrong and, where it can, how to fix it."""


class ParameterError(InspectorError, ValueError):
    """A model or component parameter outside its allowed values (raised by `fit`, not the constructor)."""
