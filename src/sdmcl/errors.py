"""Errors a user can cause and fix. The CLI prints their message on one line and exits.

`UserError` (exit 2) means: the config, the data, a checkpoint or the output directory is
not usable as given; the message says what is wrong, where, and how to fix it.
`DivergenceError` (exit 3) means: training produced a non-finite loss or weight.
"""


class UserError(Exception):
    exit_code = 2


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class OutputError(UserError):
    pass


class DivergenceError(Exception):
    exit_code = 3


def one_line(err: BaseException, limit: int = 160) -> str:
    """'Type: message' of an exception from another library, on one line (messages are one
    line: some libraries' own messages contain newlines) and at most `limit` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
