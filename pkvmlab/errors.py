"""Exception classes, one per kind of fault.

Whose fault a failure is decides what a lab does next: a configuration error is
the user's to fix and is never retried, an infrastructure error (a download
that broke, a device that dropped off USB) may be retried, a board error is a
finding about the board.  Every message names what failed and where.
"""


class PkvmlabError(Exception):
    """Base of every error pkvmlab raises on purpose."""


class ConfigError(PkvmlabError):
    """A file the user wrote is wrong: names the file, line and field.

    ``problems`` lists every problem found, so one run reports them all.
    """

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UnknownNameError(ConfigError):
    """A board, image set or environment name that does not exist; lists the known ones."""

    def __init__(self, kind, name, known, where=""):
        known_list = ", ".join(sorted(known)) or "none"
        message = f"unknown {kind} '{name}'. Available: {known_list}"
        if where:
            message = f"{where}: {message}"
        super().__init__(where or kind, [message])


class ImageError(PkvmlabError):
    """An image is missing, has the wrong checksum, or could not be built."""


class InfrastructureError(PkvmlabError):
    """The lab failed, not the board: a tool missing, a download broken, a device gone."""


class DeviceError(InfrastructureError):
    """A device (phone, board) is not found, is ambiguous, or refused a command."""


class BootError(PkvmlabError):
    """The board did not reach a shell in time; carries the last console lines."""

    def __init__(self, message, console_tail=None, log_path=None):
        self.console_tail = console_tail
        self.log_path = log_path
        text = message
        if console_tail is not None:
            text += "\n--- last console lines ---\n" + (console_tail or "(none: the board printed nothing yet)")
        if log_path:
            text += f"\n(full console log: {log_path})"
        super().__init__(text)
