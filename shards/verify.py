"""``python -m shards.verify DIR``: prove a shard directory is exactly what its manifest says, or say why not.

Per shard: size and sha256 against the manifest, the ``.idx`` against the tar's real offsets, every member
name and sample layout, every JPEG RGB and fully decoded without a libjpeg warning, ``boxes.npy`` (float32,
(1,4) still / (2,4) pair, no pickle) with every box inside its image (``0 <= x1 < x2 <= W``, same for y),
``meta.json`` consistent with the sample. Globally: sample totals against ``counts``, keys unique, the
accounting adds up (total = written + skipped), and no shard file on disk that the manifest does not list.
Exit status 1 with a readable report on any mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shards.format import (
    CURR,
    FORMAT_NAME,
    KEY_RE,
    MANIFEST_NAME,
    MAX_INDEX_BYTES,
    MAX_MEMBER_BYTES,
    MAX_PIXELS,
    MEMBERS,
    META,
    PREV,
    SCHEMA_VERSION,
    index_name,
    layout_problems,
    parse_shard_name,
    read_manifest_json,
    sha256_file,
    split_member_name,
    tar_header_problem,
    tar_of_index,
)
from shards.jpeg import LibjpegCannotCheck, exif_orientation, jpeg_header, libjpeg_warning, uncoded_scans
from shards.tarwriter import format_index

# accounting quantity -> the counts field its "written" must equal (summed over splits)
ACCOUNTED = {"xml_files": "images", "objects": "objects", "annotations": "objects", "pairs": "pairs"}
MAX_PROBLEMS_PER_SHARD = 20


def _image(data: bytes) -> tuple[int, int]:
    """(width, height) of a member JPEG, decoded in full; ValueError for what v1 never holds: another mode, more
    pixels than the builder accepts, an EXIF orientation in any Exif segment (PIL reads the stored pixels, DALI
    would rotate them: the boxes can only fit one of the two), a libjpeg warning (a JPEG cut short decodes
    without an error, its missing blocks grey), or scans that stop short."""
    with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
        if im.mode != "RGB":
            raise ValueError(f"mode {im.mode}, expected RGB")
        if im.width * im.height > MAX_PIXELS:
            raise ValueError(f"{im.width}x{im.height}: more than the builder's {MAX_PIXELS} pixels")
        for a, b in jpeg_header(data)[1]:
            orientation = exif_orientation(data[a:b])
            if orientation != 1:
                what = "an unreadable Exif segment" if orientation is None else f"EXIF orientation {orientation}"
                raise ValueError(f"{what} (v1 images are stored upright, with no orientation)")
        try:
            warning = libjpeg_warning(data)  # the full decode (libjpeg-turbo, strict); ValueError if fatal
        except LibjpegCannotCheck:
            im.load()  # a valid kind the TurboJPEG API cannot decode: PIL's full decode is the check
            warning = None
        if warning is not None:
            raise ValueError(f"libjpeg-turbo warns: {warning}")
        if uncoded := uncoded_scans(data):
            raise ValueError(f"incomplete JPEG: {uncoded}")
        return im.size


def check_sample(key: str, members: dict[str, bytes], source: str, split: str) -> list[str]:
    """Problems of one sample (empty when it is valid v1)."""
    boxes, layout = layout_problems(members, source)
    if boxes is None and any(p.startswith("missing") for p in layout):
        return [f"{key}: {p}" for p in layout]
    problems = [f"{key}: {p}" for p in layout]
    if list(members) != sorted(members, key=MEMBERS.index):
        problems.append(f"{key}: members in the order {list(members)}, SCHEMA's is {list(MEMBERS)}")
    sizes = {}
    for m in (PREV, CURR):
        if m in members:
            try:
                sizes[m] = _image(members[m])
            except Exception as e:  # any decoder failure is a finding, not a crash
                problems.append(f"{key}: {m} does not decode: {type(e).__name__}: {e}")
    if boxes is None:
        return problems
    roles = [PREV, CURR] if PREV in members else [CURR]
    if boxes.dtype == np.float32 and boxes.shape == (len(roles), 4) and len(sizes) == len(roles):
        for box, role in zip(boxes, roles, strict=True):
            w, h = sizes[role]
            x1, y1, x2, y2 = (float(v) for v in box)
            if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
                problems.append(f"{key}: {role} box {[x1, y1, x2, y2]} not inside its {w}x{h} image")
    try:
        meta = json.loads(members[META])
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except Exception as e:
        return problems + [f"{key}: meta.json unreadable: {e}"]
    for field, want_value in (("key", key), ("source", source), ("split", split)):
        if meta.get(field) != want_value:
            problems.append(f"{key}: meta {field}={meta.get(field)!r}, expected {want_value!r}")
    size = "{}x{}".format
    if CURR in sizes and (meta.get("width"), meta.get("height")) != sizes[CURR]:
        got = f"{meta.get('width')!r} x {meta.get('height')!r}"
        problems.append(f"{key}: meta width x height {got}, but curr.jpg is {size(*sizes[CURR])}")
    if PREV in sizes and CURR in sizes and sizes[PREV] != sizes[CURR]:  # the graph crops prev at curr's size
        problems.append(f"{key}: a pair's frames differ: prev.jpg {size(*sizes[PREV])}, curr.jpg {size(*sizes[CURR])}")
    for field in ("clipped", "converted"):  # one entry per box / frame
        if isinstance(meta.get(field), list) and len(meta[field]) != len(boxes):
            problems.append(f"{key}: meta {field} has {len(meta[field])} entries for {len(boxes)} box(es)")
    return problems


def verify_shard(directory: str, entry: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(file, problems, keys) for one manifest shard entry."""
    name = entry.get("file", "")
    parsed = parse_shard_name(name)
    if not parsed:
        return name, [f"manifest lists a file that is not a v1 shard name: {name!r}"], []
    source, split, _ = parsed
    for field, want in (("source", source), ("split", split), ("index", index_name(name))):
        if entry.get(field) != want:
            return name, [f"manifest entry says {field}={entry.get(field)!r}, the file name {want!r}"], []
    path = Path(directory) / name
    problems: list[str] = []
    if not path.is_file():
        return name, ["file missing"], []
    size = path.stat().st_size
    if size != entry.get("bytes"):
        problems.append(f"size {size} != manifest {entry.get('bytes')}")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        problems.append(f"sha256 {digest} != manifest {entry.get('sha256')}")
    keys: list[str] = []
    index: list[list[tuple[str, int, int, str]]] = []
    seen: set[str] = set()
    current: str | None = None
    members: dict[str, bytes] = {}

    def finish() -> None:
        if current is not None:
            problems.extend(check_sample(current, members, source, split))

    unsafe = tar_header_problem(path, strict=True)  # a build's shards are plain ustar
    if unsafe:
        problems.append(f"tar unreadable: {unsafe}")
    try:
        with contextlib.nullcontext([]) if unsafe else tarfile.open(path, "r:") as tf:
            for info in tf:
                if not info.isreg():
                    problems.append(f"non-file member {info.name!r}")
                    continue
                key, ext = split_member_name(info.name)
                if not KEY_RE.match(key) or ext not in MEMBERS:
                    problems.append(f"unexpected member {info.name!r}")
                    continue
                if key != current:
                    finish()
                    if key in seen:
                        problems.append(f"{key}: members not adjacent or key repeated")
                    seen.add(key)
                    keys.append(key)
                    index.append([])
                    current, members = key, {}
                if ext in members:
                    problems.append(f"{key}: duplicate {ext}")
                if info.size > MAX_MEMBER_BYTES:  # never read a header's word for gigabytes
                    problems.append(f"{info.name}: {info.size} bytes, more than any v1 member ({MAX_MEMBER_BYTES})")
                    break
                f = tf.extractfile(info)
                members[ext] = f.read() if f is not None else b""
                index[-1].append((ext, info.offset_data, info.size, info.name))
            finish()
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"tar unreadable: {type(e).__name__}: {e}")
    if len(keys) != entry.get("samples"):
        problems.append(f"{len(keys)} samples != manifest {entry.get('samples')}")
    idx = path.with_name(index_name(name))
    if not idx.is_file():
        problems.append(f"index {idx.name} missing")
    elif idx.stat().st_size > MAX_INDEX_BYTES:
        problems.append(f"index {idx.name}: {idx.stat().st_size} bytes, more than any v1 index ({MAX_INDEX_BYTES})")
    elif idx.read_bytes() != format_index(index).encode():  # bytes: CRLF or stray bytes are a mismatch too
        problems.append(f"index {idx.name} does not match the tar's offsets")
    if len(problems) > MAX_PROBLEMS_PER_SHARD:
        problems = problems[:MAX_PROBLEMS_PER_SHARD] + [f"... and {len(problems) - MAX_PROBLEMS_PER_SHARD} more"]
    return name, problems, keys


def manifest_shape_problems(manifest: Any) -> list[str]:
    """What makes a manifest unreadable for the checks below (wrong JSON types): reported, never a crash."""
    if not isinstance(manifest, dict):
        return [f"{MANIFEST_NAME} holds a {type(manifest).__name__}, not an object"]
    problems = []
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(e, dict) for e in shards):
        problems.append(f"{MANIFEST_NAME}: 'shards' is not a list of objects")
    else:
        for e in shards:
            for field, kind in (("file", str), ("samples", int), ("bytes", int), ("sha256", str)):
                if not isinstance(e.get(field), kind) or isinstance(e.get(field), bool):
                    problems.append(f"{MANIFEST_NAME}: shard entry {e.get('file')!r} has {field}={e.get(field)!r}")
    for section in ("counts", "accounting"):
        if not isinstance(manifest.get(section), dict):
            problems.append(f"{MANIFEST_NAME}: {section!r} is not an object")
    if problems:
        return problems

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for source, splits in manifest["counts"].items():
        if not isinstance(splits, dict) or not all(
            isinstance(c, dict) and all(count(v) for v in c.values()) for c in splits.values()
        ):
            problems.append(f"{MANIFEST_NAME}: counts[{source!r}] is not split -> {{name: count}} objects")
    for source, acc in manifest["accounting"].items():
        if not isinstance(acc, dict):
            problems.append(f"{MANIFEST_NAME}: accounting[{source!r}] is not an object")
            continue
        for qty, q in acc.items():
            if isinstance(q, dict) and "total" in q:
                skipped = q.get("skipped", {})
                if not (count(q["total"]) and count(q.get("written")) and isinstance(skipped, dict)) or not all(
                    count(v) for v in skipped.values()
                ):
                    problems.append(
                        f"{MANIFEST_NAME}: accounting[{source!r}][{qty!r}] is not total / written / skipped counts"
                    )
    return problems


def check_manifest(manifest: dict[str, Any], directory: Path) -> list[str]:
    """Global checks: schema, sample totals per source/split, accounting arithmetic, unlisted shard files."""
    problems = []
    if manifest.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version {manifest.get('schema_version')!r} != {SCHEMA_VERSION}")
    if manifest.get("format") != FORMAT_NAME:
        problems.append(f"format {manifest.get('format')!r} != {FORMAT_NAME!r}")
    counts = manifest.get("counts", {})
    per_group: Counter = Counter()
    for entry in manifest.get("shards", []):
        parsed = parse_shard_name(entry.get("file", ""))
        if parsed:
            per_group[parsed[:2]] += entry.get("samples", 0)
    groups = {(s, sp) for s, splits in counts.items() for sp in splits} | set(per_group)
    for source, split in sorted(groups):
        want = counts.get(source, {}).get(split, {}).get("samples", 0)
        if per_group[(source, split)] != want:
            problems.append(f"counts[{source}][{split}].samples = {want}, shards hold {per_group[(source, split)]}")
    for source, acc in manifest.get("accounting", {}).items():
        for qty, q in acc.items():
            if not (isinstance(q, dict) and "total" in q):
                continue
            skipped = sum(q.get("skipped", {}).values())
            if q["total"] != q["written"] + skipped:
                problems.append(f"accounting {source}.{qty}: total {q['total']} != {q['written']} + {skipped}")
            if qty in ACCOUNTED:
                field = ACCOUNTED[qty]
                have = sum(c.get(field, 0) for c in counts.get(source, {}).values())
                if have != q["written"]:
                    problems.append(f"accounting {source}.{qty}.written {q['written']} != counts {field} {have}")
    listed = {e.get("file") for e in manifest.get("shards", [])}
    for p in sorted(directory.iterdir()):
        stem = tar_of_index(p.name)
        if parse_shard_name(stem) and stem not in listed:
            problems.append(f"{p.name} is on disk but not in the manifest")
    return problems


def verify(directory: Path, workers: int = 1) -> tuple[list[str], int, int]:
    """(problems, shards checked, samples checked) for a build directory."""
    try:
        manifest = read_manifest_json(directory / MANIFEST_NAME)
    except (OSError, ValueError) as e:
        return [f"{MANIFEST_NAME}: cannot read ({e}); an interrupted build has no manifest"], 0, 0
    shape = manifest_shape_problems(manifest)
    if shape:
        return shape, 0, 0
    problems = check_manifest(manifest, directory)
    entries = manifest.get("shards", [])
    names = [e.get("file") for e in entries]
    for name, n in Counter(names).items():
        if n > 1:
            problems.append(f"{name} listed {n} times")
    all_keys: Counter = Counter()
    samples = 0
    args = [(str(directory), e) for e in entries]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(verify_shard, *zip(*args, strict=True))) if args else []
    else:
        results = [verify_shard(*a) for a in args]
    for name, shard_problems, keys in results:
        problems += [f"{name}: {p}" for p in shard_problems]
        all_keys.update(keys)
        samples += len(keys)
    repeated = [(k, n) for k, n in all_keys.items() if n > 1]
    if repeated:  # one line: a shard listed twice repeats every one of its keys
        shown = ", ".join(f"{k} ({n}x)" for k, n in repeated[:5])
        problems.append(f"{len(repeated)} key(s) appear in more than one sample, e.g. {shown}")
    return problems, len(entries), samples


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 when everything checks out, 1 with a list of problems otherwise."""
    p = argparse.ArgumentParser(prog="python -m shards.verify", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, help="build output directory (holds manifest.json)")
    p.add_argument("--workers", type=int, default=1, help="verify this many shards in parallel")
    a = p.parse_args(argv)
    if not a.directory.is_dir():
        p.error(f"{a.directory}: no such directory")
    problems, n_shards, n_samples = verify(a.directory, a.workers)
    if problems:
        print(f"FAILED: {a.directory}: {len(problems)} problem(s) in {n_shards} shards / {n_samples} samples")
        for line in problems:
            print(f"  - {line}")
        return 1
    print(f"OK: {a.directory}: {n_shards} shards, {n_samples} samples, every image decoded, every box inside")
    return 0


if __name__ == "__main__":
    sys.exit(main())
