"""User-facing errors: the CLI prints these as one line and exits with code 2 (no traceback)."""


class UserError(ValueError):
    """A mistake in config, data or command line; the message names the setting and how to fix it."""
