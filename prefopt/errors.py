"""The one base of every error prefopt reports to a user: a bad config, a bad row, a model that does not
load, a checkpoint that cannot be resumed, a judge that does not answer.

Both command lines (``prefopt.train``, ``prefopt.evaluate``) catch ``PrefoptError`` and print its message as
one line, without a traceback; anything else is a bug and keeps its traceback. Each subclass also derives
from the built-in exception it always was (``ValueError``, ``KeyError``, ``OSError``, ...), so code that
caught those still does.

This module imports nothing, so that ``prefopt.losses`` (which imports nothing else of prefopt) can use it.
"""


class PrefoptError(Exception):
    """A user-facing error: its message names the config key, row, column or path at fault."""


class ConfigError(PrefoptError, ValueError):
    """A config value out of range, missing, or in conflict with another; the message names the key."""
