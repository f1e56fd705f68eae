"""User-facing errors: one clear line naming the bad key, value or file."""


class UserError(Exception):
    """Bad user input (config key, value, or file). Entry points print it as one line and exit 2."""
