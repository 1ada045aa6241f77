"""User-facing errors: the CLI prints these as one line and exits with code 2 (no traceback)."""


class UserError(ValueError):
    """A mistake in config, data or command line; the message names the setting and how to fix it."""


def reason(e: BaseException) -> str:
    """The first line of an exception (at most 200 characters), for a one-line error about a damaged input whose
    parser may raise anything."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
