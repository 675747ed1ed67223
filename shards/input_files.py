"""Reading files a user hands over (the builder's XML, ``.ann`` and images; manifests; annotations; weights) so
that a strange entry is a reason, not a hang.

Why: input trees come from unpacked archives and hand-made copies. A FIFO named ``x.xml`` blocks ``open`` forever,
a symlink loop raises ELOOP where a listing expects a bool, a directory named ``x.ann`` reads as an error deep in
a parser. Every such read goes through `read_regular`, which never blocks, is bounded, and names what it found.
It lives here, in the torch-free bottom layer, so that shards, the builder, the model and evaluation share it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class NotRegularFile(OSError):
    """The path exists but is no regular file; the message says what it is."""


class FileTooLarge(OSError):
    """A regular file larger than its reader's bound (refused from its size, before reading)."""


def not_regular(mode: int) -> str | None:
    """What a non-regular file is (reading a FIFO or device would block or never end); None for a file."""
    return None if stat.S_ISREG(mode) else _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit``.

    Raises `NotRegularFile` for a FIFO, device or directory (opened non-blocking, so a FIFO cannot hang the
    build), `FileTooLarge` from the size alone, and the usual OSError for a missing file, a dangling symlink or a
    symlink loop.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    kind = not_regular(st.st_mode)
    if kind or st.st_size > limit:
        os.close(fd)
        raise NotRegularFile(f"{kind}, not a regular file") if kind else FileTooLarge(f"{st.st_size} bytes > {limit}")
    with open(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise FileTooLarge(f"more than {limit} bytes")
    return data


def is_file_entry(entry: os.DirEntry) -> bool:
    """``entry.is_file()`` that answers False for a symlink loop instead of raising (the frame it stands for is
    then reported missing, with what sits there, rather than losing the whole video)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def is_dir_entry(entry: os.DirEntry) -> bool:
    """``entry.is_dir()`` (links followed) that answers False for a symlink loop instead of raising."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def named_folder(folder: str | os.PathLike) -> Path:
    """``folder`` made absolute without following links, so that ``.`` or ``..`` have their folder's name (it
    names an OTB sequence and picks its frame window; it starts every path a shard build records); a link keeps
    its own name."""
    return Path(os.path.abspath(folder))
