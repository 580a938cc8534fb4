"""Exceptions that carry a user-facing message naming the file and field or tensor at fault."""

from __future__ import annotations


class NLDError(Exception):
    """Base class for every error the toolkit reports to users without a traceback."""


class ConfigError(NLDError):
    """A checkpoint's config.json / generation_config.json / adapter_config.json is invalid."""


class CheckpointError(NLDError):
    """A checkpoint's weight files are missing, unreadable or do not match the config."""
