"""
Reading a file that holds private keys (an identity file, a vault file):
a regular file, readable by its owner only, of bounded size, read as one
JSON object.  One place, so that every key file is checked the same way.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Callable, Optional, Type


def read_private_json(
    path: str,
    what: str,
    error: Type[Exception],
    max_bytes: int,
    missing: Optional[Callable[[], Exception]] = None,
    holds: str = "private keys",
) -> object:
    """
    The JSON document in C{path}, a file holding private keys.

    @param what: how messages name the file (C{"identity file"}).
    @param error: the exception class raised, with one line saying why.
    @param max_bytes: the largest file accepted.
    @param holds: what the file holds, as the message about its mode says.
    @param missing: makes the exception for a file that does not exist
        (by default the same as any file that cannot be opened).
    @raise error: when the file cannot be opened or read, is not a regular
        file, is readable or writable by group or others, is larger than
        C{max_bytes}, or is not UTF-8 JSON.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        if missing is not None:
            raise missing() from None
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if info.st_mode & 0o077:
            raise error(
                f"{what} {path} has mode {stat.S_IMODE(info.st_mode):04o}; it holds {holds} "
                "and must not be accessible to group or others (chmod 600)"
            )
        if info.st_size > max_bytes:
            raise error(f"{what} {path} is larger than {max_bytes} bytes")
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise error(f"{what} {path} is larger than {max_bytes} bytes")
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise error(f"{what} {path} is not JSON: {e}") from None
