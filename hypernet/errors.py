"""Error and warning types: every user-facing failure is a HypernetError (a ValueError)."""


class HypernetError(ValueError):
    """A problem with a file or a user input; the message names it and says what to do."""


class ConfigError(HypernetError):
    """An option has a value outside what it accepts."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class FileFormatError(HypernetError):
    """A file is unreadable, truncated, or not laid out as a hypernetwork."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class UnsafeFileError(FileFormatError):
    """A file would run code or reference objects that a weights file never needs."""


class TagError(HypernetError):
    """A <hypernet:...> tag cannot be understood."""


class NotFoundError(HypernetError):
    """A name does not resolve to exactly one hypernetwork file."""


class HypernetWarning(UserWarning):
    """Something will work, but not the way the user probably expects."""
