"""Exceptions that tell the operator what went wrong and what to do about it."""


class CartRecoveryError(Exception):
    """Base class of the project's errors; the CLI prints their message without a traceback."""


class ConfigurationError(CartRecoveryError):
    """A setting, environment variable or config file is missing or wrong."""


class DatabaseError(CartRecoveryError):
    """The warehouse cannot be reached, started or migrated."""
