"""Shard format v1: names, keys and member rules shared by the writer, the reader and `shards.verify`.

Everything a consumer needs to recognise a v1 shard lives here, so the builder and the readers cannot drift
apart (see ``shards/SCHEMA.md`` for the prose version).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shards.input_files import FileTooLarge, NotRegularFile, read_regular

SCHEMA_VERSION = 1
FORMAT_NAME = "goturn-shards-v1"
MANIFEST_NAME = "manifest.json"
BUILD_STATE_DIR = ".build"  # the builder's resume records and lock; a folder holding it is an unfinished build

SOURCES = ("imagenet", "alov")
SPLITS = ("train", "val")

CURR, PREV, BOXES, META = "curr.jpg", "prev.jpg", "boxes.npy", "meta.json"
MEMBERS = (BOXES, CURR, META, PREV)  # sorted: the order members appear in a sample
REQUIRED_MEMBERS = frozenset({CURR, BOXES, META})

SHARD_RE = re.compile(r"^(?P<source>imagenet|alov)-(?P<split>train|val)-(?P<index>\d{6})\.tar$")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")
MAX_PIXELS = 128_000_000  # no v1 image is larger: the builder refuses to decode more (decompression bombs)
MAX_INDEX_BYTES = 64 << 20  # a v1 index holds ~300 bytes a sample: this is 200k samples in one shard
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


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (a power cut after ``os.replace`` could otherwise lose the entry)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def shard_name(source: str, split: str, index: int) -> str:
    """``{source}-{split}-{NNNNNN}.tar``, the only shard name the builder writes and the readers accept."""
    if source not in SOURCES or split not in SPLITS or not 0 <= index < 1_000_000:
        raise ValueError(f"bad shard name parts: {source!r} {split!r} {index!r}")
    return f"{source}-{split}-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    """The DALI index beside a tar: same stem, ``.idx`` (what ``wds2idx shard.tar`` names it)."""
    return tar_name[: -len(".tar")] + ".idx"


def tar_of_index(name: str) -> str:
    """The tar an index file belongs to (``x.idx`` -> ``x.tar``); other names unchanged."""
    return name[: -len(".idx")] + ".tar" if name.endswith(".idx") else name


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


def layout_problems(
    members: Mapping[str, bytes], source: str | None, required: frozenset[str] = REQUIRED_MEMBERS
) -> tuple[np.ndarray | None, list[str]]:
    """(boxes, problems) of one sample's members against the v1 layout: the required members, a ``prev.jpg``
    for every pair and none for a still, ``boxes.npy`` float32 with one row per frame (read without pickles).

    The one rule `shards.verify`, `shards.dataset.decode_sample` and the loader's diagnosis of a failed batch
    apply (a pair whose boxes say "still" would otherwise train as a still, silently). ``source`` (``imagenet``
    / ``alov``, None when unknown) adds the source's own rule; ``required``: the members to insist on (a reader
    that reads only some). ``boxes`` is None when unreadable or absent.
    """
    missing = required - members.keys()
    has_prev = bool(members.get(PREV))
    if source == "alov" and not has_prev:
        missing |= {PREV}  # every ALOV sample is a pair
    if missing:
        return None, [f"missing {sorted(missing)}"]
    problems = []
    if source == "imagenet" and PREV in members:
        problems.append("an ImageNet still has a prev.jpg")
    try:
        boxes = read_boxes(members[BOXES])
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        return None, [*problems, f"boxes.npy unreadable: {type(e).__name__}: {str(e)[:120]}"]
    want = (box_rows(has_prev), 4)
    if boxes.dtype != np.float32 or boxes.shape != want:
        problems.append(
            f"boxes.npy is {boxes.dtype} {boxes.shape}, expected float32 {want} for {sample_kind(has_prev)}"
        )
    elif values := box_values_problem(boxes):
        problems.append(values)
    return boxes, problems


def box_rows(has_prev: bool) -> int:
    """Rows of a sample's ``boxes.npy``: one per frame, [prev; curr] for a pair, [curr] for a still."""
    return 2 if has_prev else 1


def sample_kind(has_prev: bool) -> str:
    """How messages name a sample of each kind."""
    return "a pair (prev.jpg and curr.jpg)" if has_prev else "a still (curr.jpg only)"


def box_values_problem(boxes: np.ndarray) -> str | None:
    """What makes ``(..., 4)`` rows no v1 corner boxes (finite, ``0 <= x1 < x2``, ``0 <= y1 < y2``), or None."""
    if np.isfinite(boxes).all() and ((boxes[..., :2] >= 0) & (boxes[..., :2] < boxes[..., 2:])).all():
        return None
    return f"boxes.npy holds {boxes.tolist()}: not corner boxes with 0 <= x1 < x2, 0 <= y1 < y2"


MAX_BOX_VALUES = 64  # a v1 boxes.npy holds 4 or 8: never allocate what a forged header claims


def _npy_header(rows: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((rows, 4), "<f4"))
    return buf.getvalue()[: -rows * 16]


_V1_HEADERS = {len(h) + rows * 16: (h, rows) for rows in (1, 2) for h in [_npy_header(rows)]}  # what the builder writes


def read_boxes(data: bytes) -> np.ndarray:
    """``boxes.npy`` bytes -> array, without pickles and after checking the header's shape (np.load would first
    allocate whatever shape a forged header claims); ValueError otherwise. The builder's own (1, 4) / (2, 4)
    float32 files take a fast path (the training feed checks every sample it draws)."""
    known = _V1_HEADERS.get(len(data))
    if known is not None and data[: len(known[0])] == known[0]:
        return np.frombuffer(data, "<f4", offset=len(known[0])).reshape(known[1], 4).copy()  # writable, as np.load
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, _ = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy format version {version}")
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_BOX_VALUES:  # Python ints: no float overflow
        raise ValueError(f"shape {shape}: more than {MAX_BOX_VALUES} values")
    return np.load(io.BytesIO(data), allow_pickle=False)


_DATA_TYPES = frozenset(b"0\x007")  # entries tarfile skips data for (regular / contiguous files)
_ENTRY_TYPES = frozenset(b"123456")  # links, devices, folders, FIFOs: tarfile reads the next header right after
_EXTENSION_TYPES = frozenset(b"xgLK")  # PAX extended / global headers, GNU long name / link name
MAX_EXTENSION_BYTES = 8 << 10  # real PAX / GNU long-name headers take a few hundred bytes


def _octal_field(field: bytes) -> int | None:
    """A numeric header field as ``tarfile`` reads it (up to the first NUL, spaces stripped, empty = 0), or None
    for anything else: base-256 (what 3.11's tarfile mishandles when negative) and non-octal text."""
    if field[:1] and field[0] & 0x80:
        return None
    text = field.split(b"\0", 1)[0].strip()
    if any(c not in b"01234567" for c in text):
        return None
    return int(text, 8) if text else 0


_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")


def _pax_records(buf: bytes) -> dict[bytes, bytes] | str:
    """PAX records framed as ``tarfile`` frames them (``"<length> <key>=<value>\n"``, parsed from the length
    prefix), or what is wrong: a record not ending in a newline, a key given twice (tarfile keeps the last, a
    reader that keeps the first sees another size), GNU sparse keys (they move where tarfile looks for the next
    header), or bytes left over that are not the block's NUL padding."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while m := _PAX_RECORD.match(buf, pos):
        length, key = int(m.group(1)), m.group(2)
        if length <= len(m.group(0)) or pos + length > len(buf) or buf[pos + length - 1 : pos + length] != b"\n":
            return f"record at {pos} is not '<length> <key>=<value>\\n'"
        if key in records:
            return f"key {key[:40]!r} given twice"
        if key.startswith(b"GNU.sparse"):
            return f"key {key[:40]!r} (GNU sparse files are not shard members)"
        records[key] = buf[m.end() : pos + length - 1]
        pos += length
    if buf[pos:].strip(b"\0"):
        return f"bytes at {pos} that are no record"
    return records


def refuse_unsafe_tar(path: str | os.PathLike) -> None:
    """ValueError naming the tar when `tar_header_problem` finds one: for readers about to hand it to ``tarfile``."""
    if unsafe := tar_header_problem(path):
        raise ValueError(f"{path}: {unsafe}")


def tar_header_problem(path: str | os.PathLike, strict: bool = False) -> str | None:
    """What makes a tar unsafe to hand to ``tarfile``, found by walking its 512-byte headers as ``tarfile`` does
    (seeks only), or None.

    Why: Python 3.11's ``tarfile`` (before 3.11.14) loops forever, growing memory, on a member whose base-256 size
    is negative, and takes quadratic time on a large PAX header. Refused: a size that is not octal digits (base-256
    included), a member over `MAX_MEMBER_BYTES`, a link / folder entry claiming data (it would hide a header from
    this walk but not from ``tarfile``), and PAX / GNU extension headers over `MAX_EXTENSION_BYTES` or whose
    ``size`` record is not a plain number within bounds. Extension headers within bounds pass (``webdataset``'s
    ``TarWriter`` and ``tar --format=posix`` write them), unless ``strict``: v1 shards are plain ustar
    (`shards.tarwriter`), so `shards.verify` refuses any.
    """
    end = os.path.getsize(path)
    offset = 0
    pax_size: int | None = None  # a PAX "size" record: the size of the next member, in place of its field
    pax_pending = False  # a PAX "x" header was read: the next header must be its member
    with open(path, "rb") as f:
        while offset + 512 <= end:
            f.seek(offset)
            header = f.read(512)
            where = f"header at byte {offset}"
            if header == b"\0" * 512:
                return None  # end-of-archive marker
            declared = _octal_field(header[148:156])
            if declared is None:
                return f"{where}: no tar header checksum (not a tar, or damaged)"
            unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
            signed = sum(struct.unpack("148b8x356b", header)) + 8 * 32  # old writers sum signed bytes
            if declared not in (unsigned, signed):
                return f"{where}: checksum mismatch (damaged)"
            size = _octal_field(header[124:136])
            if size is None:
                return f"{where}: size field {header[124:136]!r} is not octal digits"
            kind = header[156]
            if pax_pending and kind in _EXTENSION_TYPES:
                return f"{where}: a {chr(kind)!r} extension header right after a PAX header (tarfile nests them)"
            name = header[:100].split(b"\0", 1)[0]
            if kind in _EXTENSION_TYPES:
                if strict:
                    return f"{where}: a {chr(kind)!r} (PAX / GNU extension) header; v1 shards are plain ustar"
                if size > MAX_EXTENSION_BYTES:
                    return f"{where}: a {size}-byte {chr(kind)!r} extension header (at most {MAX_EXTENSION_BYTES})"
                f.seek(offset + 512)
                data = f.read(-(-size // 512) * 512)  # tarfile parses the whole padded block
                if kind in b"xg":
                    records = _pax_records(data)
                    if isinstance(records, str):
                        return f"{where}: PAX header {records}"
                    value = records.get(b"size")
                    if value is not None:
                        if kind == ord("g") or not value.isdigit() or int(value) > MAX_MEMBER_BYTES:
                            return f"{where}: PAX size record {value[:40]!r} (not a member size within bounds)"
                        pax_size = int(value)
                    pax_pending = kind == ord("x")
                offset += 512 + -(-size // 512) * 512
                continue
            pax_pending = False
            if pax_size is not None:
                size, pax_size = pax_size, None
            if size > MAX_MEMBER_BYTES:
                return f"{where}: a {size}-byte member, more than any v1 member ({MAX_MEMBER_BYTES})"
            if kind in _ENTRY_TYPES or (kind == 0 and name.endswith(b"/")):
                if size:
                    return (
                        f"{where}: a type {chr(kind or 48)!r} entry (link / folder / device) claiming {size} data bytes"
                    )
                offset += 512
                continue
            if kind not in _DATA_TYPES:
                return f"{where}: unknown entry type {chr(kind) if 32 <= kind < 127 else hex(kind)!r}"
            offset += 512 + -(-size // 512) * 512
    return None  # no end marker: a truncated copy, which the readers report in their own words


MAX_MANIFEST_BYTES = 256 << 20  # a full DET + ALOV build's manifest (every skip listed) is tens of MB


def read_manifest_json(path: str | os.PathLike) -> Any:
    """The JSON of a ``manifest.json``, read within `MAX_MANIFEST_BYTES`; ValueError naming the file otherwise
    (`shards.verify` then checks every field; other readers use `read_manifest`)."""
    path = Path(path)
    try:  # a FIFO would block a plain read, /dev/zero never end it
        data = read_regular(path, MAX_MANIFEST_BYTES)
    except NotRegularFile as e:
        raise ValueError(f"{path}: {e}") from None
    except FileTooLarge as e:
        raise ValueError(f"{path}: {e}, more than any build's manifest") from None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable manifest ({type(e).__name__}: {str(e)[:120]})") from None


def read_manifest(path: str | os.PathLike) -> dict:
    """A build's ``manifest.json`` (`read_manifest_json`), checked for the one thing every reader relies on (a
    ``shards`` list of entries naming their ``file``); ValueError naming the file otherwise."""
    manifest = read_manifest_json(path)
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str) for s in shards):
        raise ValueError(f"{path}: not a v1 manifest (no 'shards' list of entries with a 'file' name)")
    return manifest
