"""Small text files a user names on the command line or in code (a .env file, SSH public
keys): read whole, but only when they are what they claim to be. A device (/dev/zero), a pipe
or a folder, a file past its size limit, or bytes that are not UTF-8 get an error that names
the file and the problem, instead of a read without end or a traceback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from crucible.errors import InvalidRequestError

__all__ = ["read_text_file"]


def read_text_file(path: str | Path, label: str, max_bytes: int) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``max_bytes`` long. ``label``
    names it in errors (``--from-dotenv``)."""
    where = f"{label} {path}"
    try:
        fd = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidRequestError(f"{where}: no such file") from None
    except OSError as exc:
        raise InvalidRequestError(f"{where}: cannot read it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidRequestError(f"{where} is a folder; give a file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequestError(f"{where} is not a regular file (a device or a pipe)")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InvalidRequestError(f"{where} is larger than {max_bytes:,} bytes; is it the file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{where} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})"
        ) from None
