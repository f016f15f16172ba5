"""The one exception type the CLI turns into a clear message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong, where, and how to fix it."""


class DataError(UserError):
    """A data root, split file or image that cannot be read as the suite expects."""
