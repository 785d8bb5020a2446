"""Error types that the CLI maps to exit codes (2: bad input or usage, 1: a failed check)."""


class XvolError(Exception):
    """A user's mistake or bad input: the message says what is wrong and what to do."""

    exit_code = 2


class CheckFailed(Exception):
    """A verification that ran and did not pass: the message says by how much."""

    exit_code = 1
