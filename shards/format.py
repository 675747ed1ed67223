"""Shard format v1: names, keys and member rules shared by the writer, the reader and `shards.verify`.

Everything a consumer needs to recognise a v1 shard lives here, so the builder and the readers cannot drift
apart (see ``shards/SCHEMA.md`` for the prose version).
"""

from __future__ import annotations

import hashlib
import os
import re

SCHEMA_VERSION = 1
FORMAT_NAME = "goturn-shards-v1"
MANIFEST_NAME = "manifest.json"

SOURCES = ("imagenet", "alov")
SPLITS = ("train", "val")

CURR, PREV, BOXES, META = "curr.jpg", "prev.jpg", "boxes.npy", "meta.json"
MEMBERS = (BOXES, CURR, META, PREV)  # sorted: the order members appear in a sample
REQUIRED_MEMBERS = frozenset({CURR, BOXES, META})

SHARD_RE = re.compile(r"^(?P<source>imagenet|alov)-(?P<split>train|val)-(?P<index>\d{6})\.tar$")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")
MAX_MEMBER_BYTES = 256 << 20  # no v1 member is larger (the builder refuses images over 64 MiB): readers bound by it
MAX_KEY_LEN = 90  # keeps "<key>.<ext>" within a plain ustar name field (100 bytes), no PAX/GNU extensions
_MAX_MEMBER_LEN = 30  # an over-long key's last component is cut to this, leaving the group most of the room

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (shards are hundreds of MB): what the manifest records."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def shard_name(source: str, split: str, index: int) -> str:
    """``{source}-{split}-{NNNNNN}.tar``, the only shard name the builder writes and the readers accept."""
    if source not in SOURCES or split not in SPLITS or not 0 <= index < 1_000_000:
        raise ValueError(f"bad shard name parts: {source!r} {split!r} {index!r}")
    return f"{source}-{split}-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    """The DALI index beside a tar: same stem, ``.idx`` (what ``wds2idx shard.tar`` names it)."""
    return tar_name[: -len(".tar")] + ".idx"


def parse_shard_name(name: str) -> tuple[str, str, int] | None:
    """(source, split, index) for a v1 shard file name, None for anything else (never a path or URL)."""
    m = SHARD_RE.match(name)
    return (m["source"], m["split"], int(m["index"])) if m else None


def key_part(text: str) -> str:
    """One ``/``-separated key component from arbitrary text.

    Keys may only hold ``[A-Za-z0-9_-]`` (a dot would split the key for WebDataset and DALI). Text that needs
    rewriting gets a short hash of the original appended, so two different names never collide.
    """
    safe = _UNSAFE.sub("_", text)
    if safe != text or not safe:
        safe = f"{safe}_{hashlib.sha1(text.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    return safe


def _shorten(text: str, length: int) -> str:
    """``text`` cut to ``length`` characters as a readable prefix + ``_`` + 16 hex digits of its SHA-1."""
    return f"{text[: max(0, length - 17)].rstrip('/')}_{hashlib.sha1(text.encode()).hexdigest()[:16]}"


def make_key(*parts: str) -> str:
    """Join sanitized components with ``/``. An over-long key keeps its last component (the member) and
    shortens the part before it (the *group*) to a prefix + a hash of the whole group, so two groups never
    merge and one group's members stay together (readers draw by group, SCHEMA.md); an over-long member is
    shortened the same way."""
    comps = [key_part(p) for p in parts]
    key = "/".join(comps)
    if len(key) > MAX_KEY_LEN:
        *group, member = comps
        if len(member) > _MAX_MEMBER_LEN:
            member = _shorten(member, _MAX_MEMBER_LEN)
        g = "/".join(group)
        if len(g) + 1 + len(member) > MAX_KEY_LEN:
            g = _shorten(g, MAX_KEY_LEN - 1 - len(member))
        key = f"{g}/{member}" if g else member
    if not KEY_RE.match(key):
        raise ValueError(f"could not build a valid key from {parts!r}")
    return key


def split_member_name(name: str) -> tuple[str, str]:
    """Tar member name -> (key, extension), split at the first dot of the base name (WebDataset/DALI rule)."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]
