"""
The command line's errors: L{CLIError} (one line on stderr, an exit status
as Ockam 0.83 uses them) and L{os_error}.  A leaf of L{ockamtw.cli}.
"""

from __future__ import annotations

from typing import Optional


#: Exit statuses, as Ockam 0.83 uses them (the BSD sysexits).
SOFTWARE = 70  # a command that failed (Ockam's status for almost every error)
IOERR = 74  # nothing to list, or a port already taken
CANTCREAT = 73
UNAVAILABLE = 69
USAGE = 2  # a usage mistake (as clap exits)


class CLIError(Exception):
    """
    A user-facing error: one line on stderr, exit status C{code} (by
    default L{SOFTWARE}, as Ockam 0.83).
    """

    def __init__(self, message: str, code: int = SOFTWARE) -> None:
        Exception.__init__(self, message)
        self.code = code


def os_error(e: OSError, path: Optional[str] = None) -> str:
    """
    An L{OSError} in one line with the path it is about: C{/x/nodes:
    Read-only file system}.  C{path}: the path when the error has none
    (C{os.write} on a full disk names no file).
    """
    reason = e.strerror or str(e)
    where = e.filename if e.filename is not None else path
    if where is None:
        return reason
    if e.filename2 is not None:
        return f"{where} -> {e.filename2}: {reason}"
    return f"{where}: {reason}"
