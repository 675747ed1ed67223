"""The ``shards`` package on builder output: webdataset and DALI readers, verify, stats, reader safety."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from shards_testdata import cached_build, cut_short, jpeg, read_shards, sample_tree, with_exif

from shards import open_dataset
from shards.dataset import shard_paths
from shards.tarwriter import TarShardWriter
from shards.verify import verify

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory):
    return cached_build("sample", tmp_path_factory.mktemp, sample_tree)


def test_open_dataset_decodes_every_sample(sample_build):
    root, report = sample_build
    out = root / "out"
    raw = read_shards(out)
    counts = report.manifest["counts"]
    seen = {}
    for source, split in (("imagenet", "train"), ("alov", "train"), ("alov", "val")):
        items = list(open_dataset(out, source=source, split=split))
        assert len(items) == counts[source][split]["samples"]
        for s in items:
            key = s["__key__"]
            assert s["meta"]["key"] == key and s["meta"]["split"] == split
            assert s["curr"].dtype == np.uint8 and s["curr"].shape == (
                s["meta"]["height"],
                s["meta"]["width"],
                3,
            )
            n = 1 if s["prev"] is None else 2
            assert (s["prev"] is None) == (source == "imagenet")
            assert s["boxes"].dtype == np.float32 and s["boxes"].shape == (n, 4)
            np.testing.assert_array_equal(s["boxes"], np.load(io.BytesIO(raw[key]["boxes.npy"])))
            seen[key] = s
    assert set(seen) == set(raw)
    assert len(list(open_dataset(out, source=None, split=None))) == len(raw)


def test_split_by_node_and_worker(sample_build, monkeypatch):
    root, _ = sample_build
    urls = shard_paths(root / "out", "alov", "train")
    assert len(urls) >= 4
    everything = sorted(s["__key__"] for s in open_dataset(root / "out", "alov", "train"))
    parts = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            parts.append([s["__key__"] for s in open_dataset(root / "out", "alov", "train")])
    assert all(parts) and sorted(k for p in parts for k in p) == everything
    # More workers than shards (SCHEMA's DataLoader example on a small build): the spare workers yield nothing.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("NUM_WORKERS", str(len(urls) + 1))
    parts = []
    for worker in range(len(urls) + 1):
        monkeypatch.setenv("WORKER", str(worker))
        parts.append([s["__key__"] for s in open_dataset(root / "out", "alov", "train")])
    assert parts[-1] == [] and sorted(k for p in parts for k in p) == everything


def test_dali_reads_the_shards(sample_build):
    from nvidia.dali import fn, pipeline_def, types

    root, report = sample_build
    out = root / "out"
    entries = [e for e in report.manifest["shards"] if e["source"] == "alov"]
    tars = [str(out / e["file"]) for e in entries]
    idxs = [str(out / e["index"]) for e in entries]
    total = sum(e["samples"] for e in entries)

    @pipeline_def(batch_size=total, num_threads=1, device_id=None)
    def pipe():
        prev, curr, boxes, meta = fn.readers.webdataset(
            paths=tars,
            index_paths=idxs,
            ext=["prev.jpg", "curr.jpg", "boxes.npy", "meta.json"],
            missing_component_behavior="error",
            name="reader",
        )
        return fn.decoders.image(curr, device="cpu", output_type=types.RGB), fn.decoders.numpy(boxes), meta

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == total
    images, boxes, metas = p.run()
    raw = read_shards(out)
    for i in range(total):
        meta = json.loads(bytes(np.asarray(metas[i])))
        assert np.asarray(images[i]).shape == (meta["height"], meta["width"], 3)
        want = np.load(io.BytesIO(raw[meta["key"]]["boxes.npy"]))
        np.testing.assert_array_equal(np.asarray(boxes[i]), want)

    # every shard at once (stills have no prev.jpg): the indexes give DALI the global sample count
    everything = report.manifest["shards"]

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def pipe_all():
        curr, boxes = fn.readers.webdataset(
            paths=[str(out / e["file"]) for e in everything],
            index_paths=[str(out / e["index"]) for e in everything],
            ext=["curr.jpg", "boxes.npy"],
            missing_component_behavior="error",
            name="reader",
        )
        return fn.decoders.image(curr, device="cpu"), fn.decoders.numpy(boxes)

    p = pipe_all()
    p.build()
    assert p.epoch_size("reader") == len(raw)
    _, boxes = p.run()
    assert {np.asarray(b).shape for b in boxes} <= {(1, 4), (2, 4)}


def test_verify_passes_then_catches_one_flipped_byte(sample_build, tmp_path):
    root, report = sample_build
    problems, n_shards, n_samples = verify(root / "out")
    assert problems == [] and n_shards == len(report.manifest["shards"])
    assert n_samples == sum(e["samples"] for e in report.manifest["shards"])
    copy = tmp_path / "out"
    shutil.copytree(root / "out", copy, ignore=shutil.ignore_patterns(".build"))
    victim = report.manifest["shards"][0]["file"]
    with tarfile.open(copy / victim) as tf:
        jpg = next(m for m in tf if m.name.endswith("curr.jpg"))
    data = bytearray((copy / victim).read_bytes())
    data[jpg.offset_data + jpg.size // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-m", "shards.verify", str(copy)], capture_output=True, text=True)
    assert done.returncode == 1
    assert f"{victim}: sha256" in done.stdout and "FAILED" in done.stdout


def test_verify_reports_structural_problems(sample_build, tmp_path):
    root, report = sample_build
    copy = tmp_path / "out"
    shutil.copytree(root / "out", copy, ignore=shutil.ignore_patterns(".build"))
    first = report.manifest["shards"][0]
    (copy / first["index"]).write_text("v1.2 0\n")
    shutil.copy(copy / first["file"], copy / "alov-val-000099.tar")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["counts"]["alov"]["val"]["samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems, _, _ = verify(copy)
    text = "\n".join(problems)
    assert "does not match the tar's offsets" in text
    assert "alov-val-000099.tar is on disk but not in the manifest" in text
    assert "counts[alov][val].samples" in text


def _tampered(root: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(root / "out", copy, ignore=shutil.ignore_patterns(".build"))
    return copy


def _resign(copy: Path, entry: dict, members: dict[str, dict[str, bytes]]) -> None:
    """Rewrite one shard from ``members`` (key -> member bytes, in the given order) and its .idx and manifest
    entry, as a buggy builder would: only verify's layout checks can tell."""
    from shards.format import sha256_file
    from shards.tarwriter import format_index

    path = copy / entry["file"]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:  # members in the given order, unlike ours
        for key, m in members.items():
            for ext, data in m.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    index: list = []
    with tarfile.open(path) as tf:
        for info in tf:
            key, ext = info.name.split(".", 1)
            if not index or index[-1][0][3].split(".", 1)[0] != key:
                index.append([])
            index[-1].append((ext, info.offset_data, info.size, info.name))
    (copy / entry["index"]).write_text(format_index(index))
    manifest = json.loads((copy / "manifest.json").read_text())
    for e in manifest["shards"]:
        if e["file"] == entry["file"]:
            e.update(bytes=path.stat().st_size, sha256=sha256_file(path), samples=len(members))
    (copy / "manifest.json").write_text(json.dumps(manifest))


def _members(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def test_verify_reports_malformed_and_inconsistent_manifests_and_layouts(sample_build, tmp_path):
    """Each used to crash verify with a traceback, or pass: a CRLF / non-UTF-8 index, a manifest of the wrong
    JSON types, entries whose source / split / index contradict the file, a foreign format, an ALOV pair
    without its prev.jpg, members out of SCHEMA order, meta lists of the wrong length; and a shard listed twice
    printed one line per key."""
    root, report = sample_build
    alov = max((e for e in report.manifest["shards"] if e["source"] == "alov"), key=lambda e: e["samples"])

    copy = _tampered(root, tmp_path, "crlf")
    idx = copy / alov["index"]
    idx.write_bytes(idx.read_bytes().replace(b"\n", b"\r\n"))
    assert "does not match the tar's offsets" in "\n".join(verify(copy)[0])
    idx.write_bytes(b"\xff" + idx.read_bytes())
    assert "does not match the tar's offsets" in "\n".join(verify(copy)[0])

    copy = _tampered(root, tmp_path, "types")
    for bad, says in (([], "holds a list, not an object"), ({"shards": [{**alov, "samples": None}]}, "samples=None")):
        (copy / "manifest.json").write_text(json.dumps(bad))
        assert says in "\n".join(verify(copy)[0])

    copy = _tampered(root, tmp_path, "fields")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "something-else"
    other = next(e for e in manifest["shards"] if e["file"] != alov["file"])
    manifest["shards"] = manifest["shards"] + [dict(other)]  # listed twice: every key of it twice
    next(e for e in manifest["shards"] if e["file"] == alov["file"])["split"] = (
        "val" if alov["split"] == "train" else "train"
    )
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems, _, _ = verify(copy)
    text = "\n".join(problems)
    assert "format 'something-else'" in text and "manifest entry says split=" in text
    assert sum("appear in more than one sample" in p for p in problems) == 1 and len(problems) < 20

    copy = _tampered(root, tmp_path, "layout")
    members = _members(copy / alov["file"])
    keys = list(members)
    members[keys[0]].pop("prev.jpg")  # a pair without its previous frame
    m1 = members[keys[1]]
    members[keys[1]] = {"meta.json": m1["meta.json"], **{k: v for k, v in m1.items() if k != "meta.json"}}
    meta = json.loads(members[keys[1]]["meta.json"])
    meta["clipped"] = [False, False, False]
    members[keys[1]]["meta.json"] = json.dumps(meta).encode()
    _resign(copy, alov, members)
    text = "\n".join(verify(copy)[0])
    assert f"{keys[0]}: missing ['prev.jpg']" in text
    assert f"{keys[1]}: members in the order ['meta.json'" in text
    assert f"{keys[1]}: meta clipped has 3 entries for 2 box(es)" in text


def test_decode_sample_refuses_a_pair_cut_short():
    """A tar truncated inside a prev.jpg, read with a skipping handler, used to yield the pair as a still (prev
    None, two boxes): a reader following SCHEMA then trained on the prev box over the curr image."""
    from pipeline.sample_build import meta_bytes, npy_bytes
    from shards.dataset import decode_sample

    boxes = npy_bytes(np.array([[1, 2, 20, 20], [2, 3, 21, 21]], np.float32))
    sample = {"__key__": "alov/v/1_2", "curr.jpg": jpeg(40, 30), "boxes.npy": boxes}
    sample["meta.json"] = meta_bytes({"source": "alov"})
    with pytest.raises(ValueError, match=r"missing \['prev.jpg'\] \(truncated shard\?\)"):
        decode_sample(sample)
    with pytest.raises(ValueError, match=r"expected float32 \(1, 4\) for a still .*truncated shard"):
        decode_sample({**sample, "meta.json": meta_bytes({})})  # source unknown: the boxes give it away
    assert decode_sample({**sample, "prev.jpg": jpeg(40, 30)})["prev"].shape == (30, 40, 3)


def test_resampled_reading_is_seeded(sample_build):
    """webdataset's WebDataset(resampled=True) ignores seed; open_dataset honours it."""
    root, _ = sample_build

    def keys(seed):
        return [s["__key__"] for s in open_dataset(root / "out", resampled=True, seed=seed).with_epoch(6)]

    assert keys(1) == keys(1) and len(keys(1)) == 6
    assert keys(1) != keys(2)


def test_verify_checks_boxes_inside_images(tmp_path):
    from pipeline.sample_build import meta_bytes, npy_bytes

    out = tmp_path / "out"
    out.mkdir()
    members = {
        "curr.jpg": jpeg(40, 30),
        "boxes.npy": npy_bytes(np.array([[1, 2, 41, 20]], np.float32)),  # x2 > W
        "meta.json": meta_bytes({"key": "imagenet/a/b", "source": "imagenet", "split": "train", "width": 40,
                                 "height": 30}),
    }  # fmt: skip
    with open(out / "imagenet-train-000000.tar", "wb") as f:
        summary = TarShardWriter(f)
        summary.add_sample("imagenet/a/b", members)
        s = summary.close()
    (out / "imagenet-train-000000.idx").write_text(s.index)
    entry = {"file": "imagenet-train-000000.tar", "samples": 1, "bytes": s.bytes, "sha256": s.sha256}
    entry |= {"source": "imagenet", "split": "train", "index": "imagenet-train-000000.idx"}
    manifest = {"schema_version": 1, "format": "goturn-shards-v1", "accounting": {}, "shards": [entry]}
    manifest["counts"] = {"imagenet": {"train": {"samples": 1}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems, _, _ = verify(out)
    assert len(problems) == 1 and "not inside its 40x30 image" in problems[0]


def test_reader_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").touch, ())

    path = tmp_path / "alov-train-000000.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in (
            ("k.boxes.npy", io.BytesIO()),
            ("k.curr.jpg", jpeg(20, 20)),
            ("k.meta.json", json.dumps({"key": "k"}).encode()),
            ("k.pickle", pickle.dumps(Boom())),
            ("k.pyd", pickle.dumps(Boom())),
        ):
            if isinstance(data, io.BytesIO):
                np.save(data, np.array([[1, 1, 10, 10]], np.float32))
                data = data.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (s,) = list(open_dataset(str(tmp_path / "alov-train-*.tar"), source="alov"))
    assert set(s) == {"__key__", "__url__", "curr", "prev", "boxes", "meta"}
    assert not (tmp_path / "pwned").exists()
    boxes = io.BytesIO()
    np.save(boxes, np.array([Boom()], dtype=object), allow_pickle=True)
    with tarfile.open(path, "w") as tf:
        for name, data in (
            ("k.boxes.npy", boxes.getvalue()),
            ("k.curr.jpg", jpeg(20, 20)),
            ("k.meta.json", b"{}"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="pickle"):
        list(open_dataset(str(path), source="alov"))
    assert not (tmp_path / "pwned").exists()


def test_stats_cli_prints_histograms_and_plots(sample_build, tmp_path):
    root, _ = sample_build
    png = tmp_path / "stats.png"
    cmd = [sys.executable, "-m", "shards.stats", str(root / "out"), "--plot", str(png)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    for text in ("imagenet  train", "box size", "aspect", "motion", "scale change"):
        assert text in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unfinished_build_is_refused_hand_made_tars_are_read(sample_build, tmp_path):
    from pipeline.shard_sets import find_shards

    root, report = sample_build
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    (out / "manifest.json").unlink()  # what a killed (re)build leaves: .build/ records, tars, no manifest
    for read in (shard_paths, lambda d: open_dataset(d, "alov"), find_shards):
        with pytest.raises(FileNotFoundError, match="unfinished shard build.*rerun python -m pipeline.build_shards"):
            read(out)
    shutil.rmtree(out / ".build")  # neither manifest nor .build/: hand-made tars, read as they are
    assert len(shard_paths(out, None, None)) == len(report.manifest["shards"])


def test_our_packages_win_over_a_data_folder_of_the_same_name(tmp_path: Path) -> None:
    """A user's working folder with a ``shards/`` of tars (no ``__init__.py``) must not shadow this package: the
    Makefile's compat editable install puts the checkout on sys.path, where a regular package beats an implicit
    namespace folder (setuptools' default import hook lost to it: ``shards.open_dataset`` was missing)."""
    import shards

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "alov-train-000000.tar").write_bytes(b"")
    code = "import shards; print(shards.__file__); print(callable(shards.open_dataset))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    where, ok = out.stdout.split()
    assert Path(where) == Path(shards.__file__) and ok == "True"


def test_verify_and_results_scoring_survive_hostile_files(tmp_path):
    """A tar header claiming gigabytes made verify read the member (MemoryError); a results folder's meta.json
    holding a list, or times that are not numbers, made evaluate.otb --results crash."""
    from evaluate.results import read_meta, read_times

    out = tmp_path / "out"
    out.mkdir()
    info = tarfile.TarInfo("alov/v/1_2.boxes.npy")
    info.size = 1 << 32
    (out / "alov-train-000000.tar").write_bytes(info.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 2048)
    (out / "alov-train-000000.idx").write_text("v1.2 1\n")
    entry = {"file": "alov-train-000000.tar", "samples": 1, "bytes": 2560, "sha256": "0" * 64}
    entry |= {"source": "alov", "split": "train", "index": "alov-train-000000.idx"}
    manifest = {"schema_version": 1, "format": "goturn-shards-v1", "accounting": {}, "shards": [entry]}
    (out / "manifest.json").write_text(json.dumps(manifest | {"counts": {"alov": {"train": {"samples": 1}}}}))
    assert "a 4294967296-byte member, more than any v1 member" in "\n".join(verify(out)[0])

    t = tmp_path / "T"
    (t / "times").mkdir(parents=True)
    (t / "meta.json").write_text("[1, 2]")
    (t / "times" / "Seq_time.txt").write_text("x y\n")
    assert read_meta(t) == {} and read_times(t, t / "Seq.txt") is None
    (t / "meta.json").write_text('{"fps_end_to_end": "fast", "device": "cpu"}')
    assert read_meta(t)["fps_end_to_end"] == -1.0


def test_stats_reports_a_damaged_shard_in_one_line(sample_build, tmp_path, capsys):
    from shards import stats

    root, report = sample_build
    copy = tmp_path / "out"
    shutil.copytree(root / "out", copy, ignore=shutil.ignore_patterns(".build"))
    victim = copy / report.manifest["shards"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:1000])  # cut inside the first sample
    assert stats.main([str(copy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the shards") and "shards.verify" in err


def test_one_layout_rule_for_verify_reader_and_loader_diagnosis():
    """A pair whose boxes say "still" (or the reverse) is flagged alike by `shards.verify`, refused by
    `decode_sample`, and named by the loader's diagnosis of a failed batch, which reads no meta.json."""
    from pipeline.bad_samples import member_problems
    from shards.dataset import decode_sample
    from shards.verify import check_sample

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    box = np.array([[4, 5, 30, 20]], np.float32)
    meta = {"key": "alov/a/b", "source": "alov", "split": "train", "width": 48, "height": 32}
    pair = {"boxes.npy": npy(np.vstack([box, box])), "curr.jpg": jpeg(48, 32, 1), "prev.jpg": jpeg(48, 32, 2)}
    still = {"boxes.npy": npy(box), "curr.jpg": jpeg(48, 32, 1)}
    bad = {
        "pair with one box": {**pair, "boxes.npy": npy(box)},
        "pair with float64 boxes": {**pair, "boxes.npy": npy(np.vstack([box, box]).astype(np.float64))},
        "still with two boxes": {**still, "boxes.npy": npy(np.vstack([box, box]))},
        "pickled boxes": {**pair, "boxes.npy": pickle.dumps([1, 2, 3])},
    }
    for name, members in {"pair": pair, "still": still, **bad}.items():
        source = "imagenet" if name.startswith("still") else "alov"
        full = {**members, "meta.json": json.dumps({**meta, "source": source}).encode()}
        full = {m: full[m] for m in sorted(full)}  # SCHEMA's member order
        found = check_sample("alov/a/b", full, source, "train"), member_problems(members)
        if name in bad:
            assert all(any("boxes.npy" in p for p in ps) for ps in found), (name, found)
            with pytest.raises(ValueError, match="boxes.npy"):
                decode_sample({"__key__": "alov/a/b", **full})
        else:
            assert found == ([], []), (name, found)
            assert decode_sample({"__key__": "alov/a/b", **full})["boxes"].shape == (len(members) - 1, 4)


def _ustar_header(name: str, size_field: bytes, typeflag: bytes = b"0") -> bytes:
    """One 512-byte tar header with a raw size field and a correct checksum (what a forger writes)."""
    h = bytearray(tarfile.TarInfo(name).tobuf(format=tarfile.USTAR_FORMAT))
    h[124:136], h[156:157], h[148:156] = size_field, typeflag, b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def test_hostile_tars_are_refused_before_tarfile_reads_them(sample_build, tmp_path, capsys):
    """Python 3.11's tarfile loops forever on a negative base-256 size and takes quadratic time on a big PAX
    header; every reader of ours walks the plain ustar headers first. An EXIF orientation (in any Exif segment),
    a JPEG cut short (it decodes without an error), NaN boxes or a forged npy header are named by verify;
    shards.stats leaves such samples out with a warning."""
    from pipeline.shard_sets import index_entries
    from shards import stats
    from shards.format import read_boxes, tar_header_problem

    root, report = sample_build
    alov = max((e for e in report.manifest["shards"] if e["source"] == "alov"), key=lambda e: e["samples"])
    copy = _tampered(root, tmp_path, "negative")
    tar = copy / alov["file"]
    body = tar.read_bytes().rstrip(b"\0")
    body += b"\0" * (-len(body) % 512)
    tar.write_bytes(body + _ustar_header("x.boxes.npy", b"\xff" * 12) + b"\0" * 1024)
    assert "size field" in tar_header_problem(tar) and "not octal digits" in tar_header_problem(tar)
    assert any("tar unreadable: header at byte" in p for p in verify(copy)[0])
    assert stats.main([str(copy)]) == 1
    assert "alov-train-000000.tar: header at byte" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not octal digits"):
        index_entries(tar, None)  # the loader's path when an .idx is missing
    pax = tmp_path / "pax.tar"
    pax.write_bytes(_ustar_header("././@PaxHeader", b"%011o\0" % 512, b"x") + b"9" * 512 + b"\0" * 1024)
    assert "'x' (PAX / GNU extension) header; v1 shards are plain ustar" in tar_header_problem(pax, strict=True)
    big = b"%011o\0" % 200_000  # a 200 KB PAX header: minutes of tarfile's quadratic parsing
    pax.write_bytes(_ustar_header("././@PaxHeader", big, b"x") + b"9" * 200_192 + b"\0" * 1024)
    assert "a 200000-byte 'x' extension header" in tar_header_problem(pax)
    record = b"20 size=-1000000000\n"  # a PAX size record overriding the next member's
    pax.write_bytes(_ustar_header("././@PaxHeader", b"%011o\0" % len(record), b"x") + record.ljust(512, b"\0"))
    assert "PAX size record b'-1000000000'" in tar_header_problem(pax)
    nul = tmp_path / "nul.tar"  # tarfile reads a size field up to its first NUL: "\0...1000" is 0, not 512
    nul.write_bytes(_ustar_header("first", b"\0" * 7 + b"1000\0") + _ustar_header("x", b"\xff" * 12) + b"\0" * 1024)
    assert "size field b'\\xff" in tar_header_problem(nul)
    for records, why in (
        (b"10 size=0\n13 size=1024\n", "key b'size' given twice"),  # tarfile keeps the last
        (b"12 path=a.tX13 size=1024\n", "is not '<length> <key>=<value>"),  # a record not ending in a newline
        (b"22 GNU.sparse.major=1\n", "GNU sparse"),
    ):
        head = _ustar_header("././@PaxHeader", b"%011o\0" % len(records), b"x") + records.ljust(512, b"\0")
        pax.write_bytes(head + _ustar_header("a.txt", b"%011o\0" % 0) + b"\0" * 1024)
        assert why in tar_header_problem(pax), records
    chained = _ustar_header("././@PaxHeader", b"%011o\0" % 0, b"x") * 2 + b"\0" * 1024
    pax.write_bytes(chained)
    assert "extension header right after a PAX header" in tar_header_problem(pax)
    hidden = tmp_path / "hidden.tar"  # a symlink "holding" a header: tarfile reads it, a data-skipping walk would not
    hidden.write_bytes(_ustar_header("a.link", b"%011o\0" % 512, b"2") + pax.read_bytes())
    assert "(link / folder / device) claiming 512 data bytes" in tar_header_problem(hidden)
    import webdataset as wds

    theirs = tmp_path / "theirs-train-000000.tar"  # webdataset's own writer puts a PAX header on every member
    with wds.TarWriter(str(theirs)) as w:
        w.write({"__key__": "a", "curr.jpg": b"x" * 600})
    assert tar_header_problem(theirs) is None and index_entries(theirs, None)[0][0] == "a"

    copy = _tampered(root, tmp_path, "members")
    members = _members(copy / alov["file"])
    keys = list(members)
    from PIL import Image

    im = Image.open(io.BytesIO(members[keys[0]]["curr.jpg"]))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    members[keys[0]]["curr.jpg"] = buf.getvalue()
    nan = io.BytesIO()
    np.save(nan, np.array([[np.nan, 1, 5, 5], [1, 1, 5, 5]], np.float32))
    members[keys[1]]["boxes.npy"] = nan.getvalue()
    members[keys[0]]["prev.jpg"] = cut_short(members[keys[0]]["prev.jpg"])
    members[keys[1]]["prev.jpg"] = with_exif(members[keys[1]]["prev.jpg"], 1, 3)  # PIL reads only the first
    _resign(copy, alov, members)
    text = "\n".join(verify(copy)[0])
    assert f"{keys[0]}: curr.jpg does not decode: ValueError: EXIF orientation 6" in text
    assert f"{keys[1]}: boxes.npy holds [[nan," in text
    assert f"{keys[0]}: prev.jpg does not decode: ValueError: libjpeg-turbo warns: Corrupt JPEG data: premature" in text
    assert f"{keys[1]}: prev.jpg does not decode: ValueError: EXIF orientation 3" in text
    forged = io.BytesIO()
    np.lib.format.write_array_header_1_0(forged, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)})
    with pytest.raises(ValueError, match="more than 64 values"):
        read_boxes(forged.getvalue() + b"\0" * 32)
    forged = io.BytesIO()  # np.prod in float64 overflowed: OverflowError crashed shards.stats
    np.lib.format.write_array_header_1_0(forged, {"descr": "<f4", "fortran_order": False, "shape": (10**400,)})
    with pytest.raises(ValueError, match="more than 64 values"):
        read_boxes(forged.getvalue())
    meta = json.loads(members[keys[0]]["meta.json"])
    members[keys[0]]["meta.json"] = json.dumps({**meta, "width": 10**400}).encode()  # float(): OverflowError
    _resign(copy, alov, members)
    assert stats.main([str(copy)]) == 0  # the NaN and the overflowing samples are left out with a warning
    assert "2 sample(s) with unusable boxes / meta left out" in capsys.readouterr().err


def test_verify_names_a_pair_whose_frames_differ_in_size() -> None:
    """The graph crops the previous frame at the current frame's size: a pair's frames must match (SCHEMA)."""
    from pipeline.sample_build import meta_bytes, npy_bytes
    from shards.verify import check_sample

    key = "alov/01-Light_video00001/00000001_00000002"
    meta = {"key": key, "source": "alov", "split": "train", "width": 160, "height": 120}
    boxes = npy_bytes(np.array([[1, 2, 30, 20], [3, 4, 40, 30]], np.float32))
    pair = {"boxes.npy": boxes, "curr.jpg": jpeg(160, 120), "meta.json": meta_bytes(meta), "prev.jpg": jpeg(160, 120)}
    assert check_sample(key, pair, "alov", "train") == []
    problems = check_sample(key, {**pair, "prev.jpg": jpeg(80, 60)}, "alov", "train")
    assert problems == [f"{key}: a pair's frames differ: prev.jpg 80x60, curr.jpg 160x120"]
    problems = check_sample(key, {**pair, "meta.json": meta_bytes({**meta, "width": "160"})}, "alov", "train")
    assert problems == [f"{key}: meta width x height '160' x 120, but curr.jpg is 160x120"]
