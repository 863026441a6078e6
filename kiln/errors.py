"""The exception types kiln raises for problems a user can cause and fix."""


class KilnError(Exception):
    """An error the user can fix (bad path, unsupported model, bad value).

    The CLI prints its message on one line, without a traceback, and exits with status 2.
    """


class InvalidRequestError(KilnError, ValueError):
    """A request (prompt or sampling values) that cannot be served as given."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code
