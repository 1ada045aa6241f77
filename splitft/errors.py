"""User-facing errors: the CLI prints these as one line and exits with code 2 (no traceback)."""


class UserError(ValueError):
    """A mistake in config, data or command line; the message names the setting and how to fix it."""


class Mismatch(ValueError):
    """Saved state that does not fit what the config and the data build (a checkpoint resumed under an edited
    config.yaml); `checkpoint.restoring` says so in one line."""


def reason(e: BaseException) -> str:
    """The first line of an exception (at most 200 characters), for a one-line error about a damaged input whose
    parser may raise anything."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
