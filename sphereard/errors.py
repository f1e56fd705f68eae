"""User-facing errors: one clear line naming the bad key, value or file."""


class UserError(Exception):
    """Bad user input (config key, value, or file). Entry points print it as one line and exit 2."""


def first_lines(err: BaseException, count: int = 1) -> str:
    """The first `count` non-empty lines of a library error's message, joined (its type if empty)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()][:count]
    return " ".join(lines) if lines else type(err).__name__


def error_detail(err: BaseException, count: int = 1) -> str:
    """`Type: first line(s)`: a library error quoted inside a one-line UserError message."""
    return f"{type(err).__name__}: {first_lines(err, count)}"


def one_line(err: BaseException) -> str:
    """A whole message on one line (a message quoting a multi-line library error stays one line)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
