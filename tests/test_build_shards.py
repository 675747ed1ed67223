"""The shard builder: the authors' parsing rules on real and generated data, bad inputs, determinism, resuming.

Expected counts and boxes are derived here from the input files with the standard library (ElementTree,
str.split), independently of `pipeline.imagenet_det` / `pipeline.alov`.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shards_testdata import (
    ALOV_REAL_VIDEOS,
    cached_build,
    cut_short,
    edge_tree,
    exif_segment,
    flat_jpeg,
    jpeg,
    read_shards,
    real_tree,
    sample_args,
    sample_config,
    sample_tree,
    with_exif,
    xml,
)

from pipeline import alov, image_check, imagenet_det
from pipeline.build_shards import BuildConfig, build, main, parse_size
from pipeline.image_check import ImageRejected, check_image, read_image_file
from shards.format import make_key
from shards.jpeg import TRAILING_JUNK, LibjpegCannotCheck, jpeg_header, libjpeg_warning, segments

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_build(shared_data, tmp_path_factory):
    return cached_build("real", tmp_path_factory.mktemp, lambda root: real_tree(root, shared_data))


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory):
    return cached_build("sample", tmp_path_factory.mktemp, sample_tree)


@pytest.fixture(scope="session")
def edge_build(tmp_path_factory):
    return cached_build("edge", tmp_path_factory.mktemp, edge_tree)


def skipped_map(manifest: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in manifest["skipped"]}


def expected_det(ann_root: Path) -> dict[str, list[tuple[int, tuple[int, int, int, int]]]]:
    """xml rel path -> kept (object index, box) by the authors' rules; malformed XML: not in the dict."""
    out = {}
    for sub in sorted(p for p in ann_root.iterdir() if p.is_dir() and "extra" not in p.name):
        for f in sorted(sub.glob("*.xml")):
            try:
                root = ET.parse(f).getroot()
            except ET.ParseError:
                continue
            W, H = int(root.find("size/width").text), int(root.find("size/height").text)
            kept = []
            for i, obj in enumerate(root.findall("object")):
                b = tuple(int(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax"))
                if b[2] - b[0] > 0.66 * W or b[3] - b[1] > 0.66 * H:
                    continue
                if b[0] < 0 or b[1] < 0 or b[2] <= b[0] or b[3] <= b[1]:
                    continue
                kept.append((i, b))
            out[f"{sub.name}/{f.name}"] = kept
    return out


def ann_boxes(text: str) -> list[tuple[int, tuple[float, float, float, float] | None]]:
    """(frame, 0-based box) per non-blank line: min/max of the corners minus 1; None for a malformed line."""
    rows = []
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if len(f) != 9:
            rows.append((-1, None))
            continue
        xs, ys = [float(v) for v in f[1::2]], [float(v) for v in f[2::2]]
        rows.append((int(f[0]), (min(xs) - 1, min(ys) - 1, max(xs) - 1, max(ys) - 1)))
    return rows


# ------------------------------------------------------------------------------------------------------------
# Real data (../shared/data)
# ------------------------------------------------------------------------------------------------------------


def test_real_imagenet_counts_boxes_and_bytes(real_build, shared_data):
    root, report = real_build
    m = report.manifest
    kept = expected_det(shared_data / "imagenet_xml" / "annotations")
    n_obj = sum(len(v) for v in kept.values())
    n_img = sum(1 for v in kept.values() if v)
    assert m["counts"]["imagenet"]["train"] == {"samples": n_obj, "images": n_img, "objects": n_obj}
    assert m["accounting"]["imagenet"]["xml_files"]["total"] == len(kept) == 15
    samples = read_shards(root / "out")
    for rel, objs in kept.items():
        stem = rel.split("/")[1][: -len(".xml")]
        src = (shared_data / "imagenet_xml" / "images" / rel.split("/")[0] / f"{stem}.JPEG").read_bytes()
        for index, box in objs:
            s = samples[make_key("imagenet", "val", stem, f"obj{index:02d}")]
            assert s["curr.jpg"] == src  # baseline RGB JPEG: bytes copied unchanged
            assert set(s) == {"curr.jpg", "boxes.npy", "meta.json"}
            boxes = np.load(io.BytesIO(s["boxes.npy"]), allow_pickle=False)
            assert boxes.dtype == np.float32 and boxes.shape == (1, 4)
            np.testing.assert_array_equal(boxes[0], np.asarray(box, np.float32))
            meta = json.loads(s["meta.json"])
            assert meta["object_index"] == index and meta["image"].endswith(f"val/{stem}.JPEG")
            assert (meta["width"], meta["height"]) == Image.open(io.BytesIO(src)).size
    n_dropped = sum(1 for v in kept.values() if not v)
    assert m["accounting"]["imagenet"]["xml_files"]["skipped"] == ({"no_kept_object": n_dropped} if n_dropped else {})


def test_real_alov_pairs_splits_and_boxes(real_build, shared_data):
    root, report = real_build
    m = report.manifest
    rows = ann_boxes((shared_data / "alov" / "01-Light_video00001.ann").read_text())
    assert len(rows) == 19
    # 6 .ann files, 01-Light_video00016 overlaps VOT-2014 -> 5 kept, int(0.2 * 5) = 1 val video (the last)
    assert m["counts"]["alov"]["train"] == {"samples": 72, "images": 76, "objects": 76, "pairs": 72}
    assert m["counts"]["alov"]["val"] == {"samples": 18, "images": 19, "objects": 19, "pairs": 18}
    assert skipped_map(m)["alov_ann/01-Light/01-Light_video00016.ann"].startswith("vot2014_overlap")
    samples = read_shards(root / "out")
    frame = (root / "alov_frames" / "01-Light" / ALOV_REAL_VIDEOS[0] / "00000001.jpg").read_bytes()
    for video in ALOV_REAL_VIDEOS[:5]:
        for (f0, b0), (f1, b1) in zip(rows, rows[1:], strict=False):
            s = samples[f"alov/{video}/{f0:08d}_{f1:08d}"]
            assert s["prev.jpg"] == frame and s["curr.jpg"] == frame
            boxes = np.load(io.BytesIO(s["boxes.npy"]), allow_pickle=False)
            np.testing.assert_array_equal(boxes, np.asarray([b0, b1], np.float32))
            meta = json.loads(s["meta.json"])
            assert meta["split"] == ("val" if video.endswith("00005") else "train")
            assert (meta["prev_frame"], meta["curr_frame"]) == (f0, f1)
    assert not any(k.startswith("alov/01-Light_video00016/") for k in samples)


def test_builds_are_deterministic_across_worker_counts(real_build, tmp_path):
    root, report = real_build  # built with 2 workers
    args = report.manifest["arguments"]
    assert "workers" not in args and report.workers == 2
    again = build(
        BuildConfig(
            out=tmp_path / "out",
            imagenet_images=Path(args["imagenet_images"]),
            imagenet_annotations=Path(args["imagenet_annotations"]),
            alov_frames=Path(args["alov_frames"]),
            alov_annotations=Path(args["alov_annotations"]),
            workers=1,
            progress=False,
        )
    )
    assert again.manifest == report.manifest | {"arguments": args | {"out": str(tmp_path / "out")}}
    for entry in report.manifest["shards"]:
        assert (tmp_path / "out" / entry["file"]).read_bytes() == (root / "out" / entry["file"]).read_bytes()
        assert (tmp_path / "out" / entry["index"]).read_bytes() == (root / "out" / entry["index"]).read_bytes()


# ------------------------------------------------------------------------------------------------------------
# Generated sample data with bad inputs (pipeline.make_sample_data)
# ------------------------------------------------------------------------------------------------------------


def test_sample_counts_follow_the_rules(sample_build):
    root, report = sample_build
    m = report.manifest
    data = root / "data"
    sm = json.loads((data / "sample_manifest.json").read_text())
    truncated = {e["xml"].split("/", 2)[2] for e in sm["bad_inputs"] if e["kind"] == "truncated_jpeg"}
    kept = expected_det(data / "imagenet" / "ILSVRC2014_DET_bbox_train")
    written = {rel: objs for rel, objs in kept.items() if rel not in truncated}
    n_obj = sum(len(v) for v in written.values())
    assert m["counts"]["imagenet"]["train"] == {
        "samples": n_obj,
        "images": sum(1 for v in written.values() if v),
        "objects": n_obj,
    }
    xml_files = m["accounting"]["imagenet"]["xml_files"]
    extra = sm["imagenet"]["extra_images"]  # one XML each, in the negative-only folder
    assert xml_files["total"] == len(kept) + 1 + extra  # + the malformed XML
    assert xml_files["skipped"]["xml_error"] == 1 and xml_files["skipped"]["corrupt_image"] == 1
    assert xml_files["skipped"]["extra_folder"] == extra
    # the generator labels each object with the rule the builder applies: the tallies agree (the bad inputs'
    # objects included, bar the malformed XML's, which the builder cannot read)
    objects = m["accounting"]["imagenet"]["objects"]["skipped"]
    readable = [e for e in sm["bad_inputs"] if "objects_too_large" in e and e["kind"] != "malformed_xml"]
    for ours, theirs in (("too_large", "objects_too_large"), ("invalid_box", "objects_invalid")):
        assert objects[ours] == sm["imagenet"][theirs] + sum(e[theirs] for e in readable) > 0
    # ALOV: consecutive lines whose frame file exists; the last int(0.2 n) videos per category are val
    expect: Counter = Counter()
    ann_root = data / "alov" / "alov300++_rectangleAnnotation_full"
    for cat in sorted(ann_root.iterdir()):
        anns = sorted(cat.glob("*.ann"))
        n_val = int(0.2 * len(anns))
        for i, ann in enumerate(anns):
            split = "val" if i >= len(anns) - n_val else "train"
            frames = data / "alov" / "imagedata++" / cat.name / ann.stem
            ok = [b is not None and (frames / f"{f:08d}.jpg").exists() for f, b in ann_boxes(ann.read_text())]
            expect[split] += sum(a and b for a, b in zip(ok, ok[1:], strict=False))
    assert {s: c["pairs"] for s, c in m["counts"]["alov"].items()} == dict(expect)
    # the clean videos' pairs, plus the two bad videos' pairs minus the 2 each loses (one unusable middle
    # line)
    bad = [e for e in sm["bad_inputs"] if e["kind"] in ("ann_malformed_line", "alov_missing_frame")]
    assert sum(expect.values()) == sm["alov"]["pairs"] + sum(e["annotated_frames"] - 1 - 2 for e in bad)


def test_sample_bad_inputs_are_reported(sample_build):
    root, report = sample_build
    m = report.manifest
    sm = json.loads((root / "data" / "sample_manifest.json").read_text())
    skipped = skipped_map(m)
    reencoded = {e["path"]: e["reason"] for e in m["reencoded"]}
    samples = read_shards(root / "out")

    def find(table: dict[str, str], path: str) -> str:
        hits = [reason for p, reason in table.items() if path.endswith(p)]
        assert len(hits) == 1, (path, table)
        return hits[0]

    kinds = {e["kind"]: e for e in sm["bad_inputs"]}
    assert set(kinds) == {
        "truncated_jpeg", "png_as_jpeg", "cmyk_jpeg", "malformed_xml", "vid_order_xml",
        "ann_malformed_line", "alov_missing_frame",
    }  # fmt: skip
    assert find(skipped, kinds["truncated_jpeg"]["image"]).startswith("corrupt_image")
    assert find(skipped, kinds["malformed_xml"]["xml"]).startswith("xml_error: malformed XML")
    assert find(reencoded, kinds["png_as_jpeg"]["image"]) == "png"
    assert find(reencoded, kinds["cmyk_jpeg"]["image"]) == "cmyk"
    line = kinds["ann_malformed_line"]
    assert find(skipped, f"{line['ann']}:{line['line']}").startswith("malformed_line")
    assert find(skipped, kinds["alov_missing_frame"]["path"]).startswith("missing_frame")
    # the VID-ordered XML is valid: its kept objects are written with the right boxes
    vid = kinds["vid_order_xml"]
    root_el = ET.parse(root / "data" / vid["xml"]).getroot()
    name = root_el.find("filename").text
    written = [k for k in samples if k.startswith(f"imagenet/{root_el.find('folder').text}/{name}/")]
    assert len(written) == vid["objects_kept"] > 0
    for kind in ("png_as_jpeg", "cmyk_jpeg"):  # re-encoded: RGB JPEGs in the shard
        stem = kinds[kind]["image"].rsplit("/", 1)[1][: -len(".JPEG")]
        members = [s for k, s in samples.items() if k.split("/")[2] == stem]
        assert members
        for s in members:
            im = Image.open(io.BytesIO(s["curr.jpg"]))
            assert (im.format, im.mode) == ("JPEG", "RGB")


def test_sample_boxes_equal_rule_derived_boxes(sample_build):
    root, report = sample_build
    data = root / "data"
    samples = read_shards(root / "out")
    checked = Counter()
    for key, s in samples.items():
        meta = json.loads(s["meta.json"])
        boxes = np.load(io.BytesIO(s["boxes.npy"]), allow_pickle=False)
        W, H = Image.open(io.BytesIO(s["curr.jpg"])).size
        if meta["source"] == "imagenet":
            obj = ET.parse(data / "imagenet" / meta["annotation"]).getroot().findall("object")[meta["object_index"]]
            b = [float(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
            want = [np.clip(b, 0, [W, H, W, H])]
        else:
            rows = dict(ann_boxes((data / "alov" / meta["annotation"]).read_text()))
            want = [np.clip(rows[f], 0, [W, H, W, H]) for f in (meta["prev_frame"], meta["curr_frame"])]
        np.testing.assert_array_equal(boxes, np.asarray(want, np.float32), err_msg=key)
        checked[meta["source"]] += 1
    assert checked["imagenet"] > 20 and checked["alov"] > 40


def test_accounting_adds_up(sample_build, edge_build):
    for _, report in (sample_build, edge_build):
        totals = [
            q
            for acc in report.manifest["accounting"].values()
            for q in acc.values()
            if isinstance(q, dict) and "total" in q
        ]
        assert len(totals) >= 2  # at least each source's own count
        for q in totals:
            assert q["total"] == q["written"] + sum(q["skipped"].values())


# ------------------------------------------------------------------------------------------------------------
# Hand-made edge cases
# ------------------------------------------------------------------------------------------------------------


def test_edge_imagenet(edge_build):
    root, report = edge_build
    acc = report.manifest["accounting"]["imagenet"]
    assert acc["xml_files"] == {
        "total": 18,
        "written": 8,
        "skipped": {
            "corrupt_image": 1,
            "duplicate_image": 1,
            "empty_image": 1,
            "extra_folder": 1,  # every XML file is accounted for, the negative-only folder's too
            "missing_image": 1,
            "unsupported_format": 1,
            "xml_error": 4,
        },
    }
    assert acc["objects"] == {
        "total": 15,
        "written": 8,
        "skipped": {"bad_coordinates": 1, "box_outside_image": 1, "image_skipped": 5},
    }
    assert acc["notes"] == {
        "images_rescaled": 1,
        "boxes_clipped": 1,
        "images_converted": {"exif_orientation": 1, "grayscale": 1},
    }
    assert acc["extra_folders"] == [{"path": "ann/ILSVRC2013_train_extra0", "xml_files": 1}]
    s = read_shards(root / "out")
    box = {k.split("/")[2]: np.load(io.BytesIO(v["boxes.npy"]))[0].tolist() for k, v in s.items()}
    assert box["rescale"] == [20, 20, 60, 50]  # XML 400x300, image 200x150: x rows/display_height = 0.5
    assert box["clip"] == [150, 20, 200, 60]  # xmax 230 > W: kept by the authors, clipped to the image
    assert box["badcoord"] == [12, 10, 40, 40]  # atoi(" 12.7") = 12
    assert "outside" in box and box["outside"] == [10, 10, 50, 50]  # object 0 had no area in the image
    prog = (root / "img" / "n01" / "progressive.JPEG").read_bytes()
    assert s["imagenet/n01/progressive/obj00"]["curr.jpg"] == prog
    rotated = s["imagenet/n01/rotated/obj00"]["curr.jpg"]
    src = (root / "img" / "n01" / "rotated.JPEG").read_bytes()
    assert len(rotated) < len(src) and Image.open(io.BytesIO(rotated)).getexif().get(0x0112) is None
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rotated))), np.asarray(Image.open(io.BytesIO(src))))
    skipped = skipped_map(report.manifest)
    assert skipped["ann/n01/xxe.xml"].startswith("xml_error: missing or unsafe <folder>")
    assert "TOPSECRET" not in json.dumps(report.manifest)
    assert skipped["ann/n01/escape.xml"].startswith("xml_error")
    assert skipped["ann/n01/huge.xml"].startswith("xml_error: file larger")
    assert skipped["ann/n01/outside.xml#object0"].startswith("box_outside_image")
    assert skipped["ann/n01/badcoord.xml#object0"] == "bad_coordinates: a <bndbox> coordinate missing or not a number"
    assert skipped["img/n01/gif.JPEG"].startswith("unsupported_format")
    assert skipped["img/n01/garbage.JPEG"].startswith("corrupt_image") and " at 0x" not in json.dumps(skipped)


def test_edge_alov(edge_build):
    root, report = edge_build
    acc = report.manifest["accounting"]["alov"]
    assert acc["videos"] == {
        "total": 5,
        "written": 2,
        "skipped": {"missing_frames_dir": 1, "no_pair_written": 1, "too_few_annotations": 1},
    }
    assert acc["annotations"] == {
        "total": 16,
        "written": 4,
        "skipped": {
            "box_outside_image": 1,
            "corrupt_image": 1,
            "duplicate_frame": 1,
            "frame_size_mismatch": 1,
            "missing_frame": 1,
            "missing_frames_dir": 2,
            "no_pair_written": 4,
            "too_few_annotations": 1,
        },
    }
    assert acc["pairs"] == {
        "total": 11,
        "written": 2,
        "skipped": {
            "box_outside_image": 2,
            "corrupt_image": 2,
            "duplicate_frame": 2,
            "frame_size_mismatch": 1,
            "missing_frame": 1,
            "missing_frames_dir": 1,
        },
    }
    s = {k: v for k, v in read_shards(root / "out").items() if k.startswith("alov/")}
    assert sorted(s) == [
        "alov/01-Light_video00001/00000001_00000002",
        "alov/01-Light_video00002/00000005_00000006",
    ]
    b = np.load(io.BytesIO(s["alov/01-Light_video00001/00000001_00000002"]["boxes.npy"]))
    assert b.tolist() == [[10, 10, 30, 30], [90, 10, 100, 30]]  # curr box clipped to the 100 px wide frame
    v2 = json.loads(s["alov/01-Light_video00002/00000005_00000006"]["meta.json"])
    assert v2["prev_image"].endswith("00000005.jpg")  # looked up by number across the gap at frame 4
    assert report.manifest["warnings"] == [
        {
            "path": "frames/01-Light/01-Light_video00002/00000004.jpg",
            "reason": "missing_frame: not annotated, no pair affected",
        }
    ]


# ------------------------------------------------------------------------------------------------------------
# Resuming after kill -9, index files
# ------------------------------------------------------------------------------------------------------------


def test_resume_after_sigkill_ends_identical(sample_build, tmp_path):
    """kill -9 right after the first shard is finished (record, tar and index renamed into place): a rerun reuses
    that shard and ends with the very manifest of an uninterrupted build."""
    root, report = sample_build
    cfg = sample_config(root / "data", tmp_path / "out", workers=1)
    script = (
        "import os, signal, sys\n"
        "import pipeline.build_shards as b\n"
        "real = b.write_shard\n"
        "def write_then_die(*args, **kwargs):\n"
        "    real(*args, **kwargs)\n"
        "    os.killpg(0, signal.SIGKILL)  # the builder and any worker it started\n"
        "b.write_shard = write_then_die\n"
        "sys.exit(b.main(sys.argv[1:]))\n"
    )
    args = [*sample_args(cfg), "--workers", "1"]
    killed = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, start_new_session=True, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL and not (cfg.out / "manifest.json").exists()
    assert len(list(cfg.out.glob("*.tar"))) == len(list(cfg.out.glob("*.idx"))) == 1
    args[-1] = "2"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.build_shards", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(re.search(r"reused (\d+)", done.stdout).group(1)) == 1
    resumed = json.loads((cfg.out / "manifest.json").read_text())
    assert resumed["shards"] == report.manifest["shards"]
    assert not list(cfg.out.glob("*.partial"))


def test_index_files_equal_wds2idx(sample_build, tmp_path):
    from wds2idx import IndexCreator

    root, report = sample_build
    for entry in report.manifest["shards"]:
        idx = tmp_path / entry["index"]
        with IndexCreator(str(root / "out" / entry["file"]), str(idx), verbose=False) as ic:
            ic.create_index()
        assert idx.read_bytes() == (root / "out" / entry["index"]).read_bytes(), entry["file"]


# ------------------------------------------------------------------------------------------------------------
# Units
# ------------------------------------------------------------------------------------------------------------


def test_parse_size():
    assert parse_size("512MB") == 512_000_000
    assert parse_size("1GiB") == 2**30
    assert parse_size("60000") == 60000
    assert parse_size("1.5k") == 1500


def test_keys_have_no_dots_and_stay_unique():
    a, b = make_key("alov", "Jogging.1", "x"), make_key("alov", "Jogging_1", "x")
    assert "." not in a and a != b and b == "alov/Jogging_1/x"
    long = make_key("imagenet", "n" * 200)
    assert len(long) <= 90 and long != make_key("imagenet", "n" * 199)
    # An over-long key keeps its member and a group of its own (readers draw a group, then a member).
    a0, a1, b0 = (make_key("imagenet", "n01443537", c * 70, f"obj{i:02d}") for c, i in (("a", 0), ("a", 1), ("b", 0)))
    assert max(map(len, (a0, a1, b0))) <= 90 and a0.endswith("/obj00") and a1.endswith("/obj01")
    assert a0.rsplit("/", 1)[0] == a1.rsplit("/", 1)[0] != b0.rsplit("/", 1)[0]


def test_imagenet_parsing_units():
    assert imagenet_det.atoi(" 12.7") == 12 and imagenet_det.atoi("-3") == -3 and imagenet_det.atoi("x") is None
    vid = b"<annotation><folder>f</folder><filename>a</filename>"
    vid += b"<size><width>100</width><height>100</height></size>"
    vid += b"<object><bndbox><xmax>30</xmax><xmin>10</xmin><ymax>40</ymax><ymin>5</ymin></bndbox></object>"
    vid += b"<object><bndbox><xmax>80</xmax><xmin>10</xmin><ymax>20</ymax><ymin>5</ymin></bndbox></object>"
    vid += b"<object><bndbox><xmax>10</xmax><xmin>10</xmin><ymax>20</ymax><ymin>5</ymin></bndbox></object>"
    ann = imagenet_det.parse_annotation(vid + b"</annotation>")
    assert [(o.box, o.drop) for o in ann.objects] == [
        ((10, 5, 30, 40), None),
        ((10, 5, 80, 20), "too_large"),  # 70 > 0.66 * 100
        ((10, 5, 10, 20), "invalid_box"),
    ]
    bomb = b'<!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;&x;&x;">]>'
    with pytest.raises(imagenet_det.XmlError):
        imagenet_det.parse_annotation(bomb + b"<annotation><folder>&y;</folder></annotation>")
    many = vid + b"<object/>" * (imagenet_det.MAX_OBJECTS + 1) + b"</annotation>"  # 4 MB held 466,000 of them
    with pytest.raises(imagenet_det.XmlError, match="objects, more than"):
        imagenet_det.parse_annotation(many)


def test_alov_units(tmp_path):
    line = alov.parse_line(1, "1 1080.2 187.84 1012.9 187.84 1012.9 269.56 1080.2 269.56")
    assert line.box == pytest.approx((1011.9, 186.84, 1079.2, 268.56))
    assert alov.parse_line(2, "1 2 3").error.startswith("malformed_line")
    assert alov.parse_line(3, "1 2 3 4 5 6 7 8 nan").error.startswith("malformed_line")
    for odd in ("1_4", "\u0661\u0666", "+3", "0x10"):  # int() takes the first two; no .ann spells a frame so
        assert alov.parse_line(4, f"{odd} 5 5 30 5 30 30 5 30").error.startswith("malformed_line: not numbers")
    (bom,) = alov.parse_ann(b"\xef\xbb\xbf3 5 5 30 5 30 30 5 30\n")  # a byte-order mark is not part of line 1
    assert bom.frame == 3 and bom.error is None
    huge_frame = alov.parse_line(5, "9" * 5000 + " 5 5 30 5 30 30 5 30")  # int() refuses it: the video was lost
    assert huge_frame.error.startswith("malformed_line: not numbers")
    with pytest.raises(ValueError, match="more than 20000 annotation lines"):  # 16 MB of "1" lines took 6.9 GB
        alov.parse_ann(b"1\n" * (alov.MAX_ANN_LINES + 1))
    for cat, n in (("01-Light", 25), ("02-SurfaceCover", 15)):
        (tmp_path / cat).mkdir()
        for i in range(1, n + 1):
            (tmp_path / cat / f"{cat}_video{i:05d}.ann").write_text("")
    split = Counter(v.split for v in alov.list_videos(tmp_path, tmp_path, 0.2, False))
    # 25 - 3 VOT videos = 22 -> int(4.4) = 4 val; 15 - 1 = 14 -> int(2.8) = 2 val
    assert split == {"train": 18 + 12, "val": 4 + 2, None: 3 + 1}
    keep = Counter(v.split for v in alov.list_videos(tmp_path, tmp_path, 0.2, True))
    assert keep == {"train": 20 + 12, "val": 5 + 3}  # int(0.2 * 15) = int(3.0000000000000004) = 3


@pytest.mark.parametrize(
    ("make", "converted"),
    [
        (lambda: jpeg(40, 30), None),
        (lambda: jpeg(40, 30, progressive=True), None),
        (lambda: jpeg(40, 30, mode="L"), "grayscale"),
        (lambda: jpeg(40, 30, mode="CMYK"), "cmyk"),
        (lambda: jpeg(40, 30, format="PNG"), "png"),
        (lambda: jpeg(40, 30, mode="RGBA", format="PNG"), "png"),
    ],
)
def test_check_image_kinds(make, converted):
    data = make()
    c = check_image(data)
    assert (c.width, c.height, c.converted) == (40, 30, converted)
    assert (c.data == data) == (converted is None)
    assert Image.open(io.BytesIO(c.data)).mode == "RGB"


def test_check_image_rejects():
    good = jpeg(64, 48)
    for bad, code in (
        (good[: len(good) // 2], "corrupt_image"),
        (b"", "empty_image"),
        (b"BM...", "unsupported_format"),
        (b"\xff\xd8garbage", "corrupt_image"),  # a JPEG's start-of-image, then junk: damaged, not another format
    ):
        with pytest.raises(ImageRejected) as e:
            check_image(bad)
        assert e.value.code == code


def test_rebuild_with_other_arguments_replaces_stale_shards_and_respects_the_lock(edge_build, tmp_path):
    import fcntl

    from pipeline.build_shards import BuildLocked
    from shards.verify import verify

    root, report = edge_build
    a = report.manifest["arguments"]
    cfg = BuildConfig(
        out=tmp_path / "out",
        imagenet_images=Path(a["imagenet_images"]),
        imagenet_annotations=Path(a["imagenet_annotations"]),
        alov_frames=Path(a["alov_frames"]),
        alov_annotations=Path(a["alov_annotations"]),
        alov_val_fraction=0.0,
        shard_size=1,  # one sample per shard
        progress=False,
    )
    many = build(cfg).manifest["shards"]
    assert len(many) == 10 and {e["samples"] for e in many} == {1}
    few = build(replace(cfg, shard_size=10**9)).manifest["shards"]
    assert [e["file"] for e in few] == ["alov-train-000000.tar", "imagenet-train-000000.tar"]
    assert sorted(p.name for p in cfg.out.glob("*-*-*.*")) == sorted(
        [e["file"] for e in few] + [e["index"] for e in few]
    )
    assert verify(cfg.out)[0] == []
    with open(cfg.out / ".build" / "lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(BuildLocked):
            build(cfg)


# ------------------------------------------------------------------------------------------------------------
# Review findings: wrong layouts, non-regular files, dead workers, 16-bit PNG, EXIF, pixel limits, manifest
# ------------------------------------------------------------------------------------------------------------


def tiny_config(root: Path, **kw: object) -> BuildConfig:
    """Two DET images and one 4-frame ALOV video, in the layout the builder reads (add bad inputs around it)."""
    img, ann, frames, anns = root / "det_img", root / "det_ann", root / "alov_frames", root / "alov_ann"
    (img / "n01").mkdir(parents=True)
    (ann / "n01").mkdir(parents=True)
    for name in ("a", "b"):
        (img / "n01" / f"{name}.JPEG").write_bytes(jpeg(64, 48))
        (ann / "n01" / f"{name}.xml").write_text(xml("n01", name, 64, 48, [(5, 5, 30, 30)]))
    video = frames / "01-Light" / "01-Light_video00001"
    video.mkdir(parents=True)
    for i in range(1, 5):
        (video / f"{i:08d}.jpg").write_bytes(jpeg(64, 48, seed=i))
    (anns / "01-Light").mkdir(parents=True)
    (anns / "01-Light" / "01-Light_video00001.ann").write_text(
        "".join(f"{i} 5 5 30 5 30 30 5 30\n" for i in range(1, 5))
    )
    cfg = {"imagenet_images": img, "imagenet_annotations": ann, "alov_frames": frames, "alov_annotations": anns}
    return BuildConfig(out=root / "out", alov_val_fraction=0.0, workers=1, progress=False, **(cfg | kw))


def test_roots_given_as_dot_record_their_names(tmp_path, monkeypatch):
    """``--imagenet-images .`` recorded "/n01/a.JPEG" (an empty root name): other paths in the manifest and
    meta.json, other plan hashes, so a resume from another folder rebuilt every shard. The same tree spelled
    either way now gives the very same build; a listed invalid box says what it was."""
    cfg = tiny_config(tmp_path)
    (cfg.imagenet_annotations / "n01" / "c.xml").write_text(xml("n01", "a", 64, 48, [(30, 5, 10, 30)]))
    first = build(replace(cfg, out=tmp_path / "abs")).manifest
    monkeypatch.chdir(cfg.imagenet_images)
    dotted = build(replace(cfg, out=tmp_path / "dot", imagenet_images=Path("."))).manifest
    assert dotted["shards"] == first["shards"] and dotted["skipped"] == first["skipped"]
    skipped = skipped_map(first)
    want = "invalid_box: xmin, ymin, xmax, ymax [30, 5, 10, 30] in a 64x48 image"
    assert skipped["det_ann/n01/c.xml#object0"] == want


def cli_args(cfg: BuildConfig) -> list[str]:
    """The command line of a `tiny_config` (sources left out when None)."""
    args = ["--out", str(cfg.out), "--alov-val-fraction", str(cfg.alov_val_fraction), "--no-progress"]
    for option in ("imagenet_images", "imagenet_annotations", "alov_frames", "alov_annotations"):
        if getattr(cfg, option) is not None:
            args += ["--" + option.replace("_", "-"), str(getattr(cfg, option))]
    return args


class StillRunning(BaseException):
    """A `deadline` expired (a BaseException: the builder's ``except Exception`` handlers must not absorb it)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging (the builder used to block forever on some inputs)."""

    def expire(*_: object) -> None:
        raise StillRunning(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_annotation_roots_one_level_off_stop_the_build(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "flat")
    det = cfg.imagenet_annotations
    for f in (det / "n01").iterdir():  # XMLs directly in the root, as if --imagenet-annotations named a synset
        f.rename(det / f.name)
    (det / "n01").rmdir()
    assert main(cli_args(cfg)) == 2
    err = capsys.readouterr().err
    assert f"expected {imagenet_det.LAYOUT}" in err and f"found 2 .xml files directly in {det}" in err
    assert not (cfg.out / "manifest.json").exists()

    cfg = tiny_config(tmp_path / "deep", imagenet_images=None, imagenet_annotations=None)
    alov_ann = cfg.alov_annotations
    (alov_ann / "ALOV").mkdir()
    (alov_ann / "01-Light").rename(alov_ann / "ALOV" / "01-Light")  # one level too deep
    assert main(cli_args(cfg)) == 2
    err = capsys.readouterr().err
    assert f"expected {alov.LAYOUT}" in err and "found 1 .ann file deeper, in 1 folder(s) such as ALOV/01-Light/" in err

    root = tmp_path / "noimages"  # right layout, wrong images root: every XML skipped
    cfg = tiny_config(root, imagenet_images=root / "alov_frames")
    assert main(cli_args(cfg)) == 2
    err = capsys.readouterr().err
    assert "no ImageNet DET sample" in err and "missing_image 2" in err and f"read as {root / 'alov_frames'}/" in err
    for c in ("flat", "deep", "noimages"):  # a refused build leaves no --out behind (it used to hold .build/lock)
        assert not (tmp_path / c / "out").exists()


def test_a_build_never_silently_deletes_another_sources_shards(tmp_path, capsys):
    """ImageNet built into --out, then an ALOV-only command into the same --out: refused (the ImageNet shards
    would be stale for this build and deleted) unless --overwrite."""
    cfg = tiny_config(tmp_path)
    alov_only = replace(cfg, imagenet_images=None, imagenet_annotations=None)
    assert main(cli_args(replace(cfg, alov_frames=None, alov_annotations=None))) == 0
    before = sorted(p.name for p in cfg.out.glob("imagenet-*"))
    assert before
    assert main(cli_args(alov_only)) == 2
    err = capsys.readouterr().err
    assert "holds imagenet shards" in err and "--overwrite" in err
    assert sorted(p.name for p in cfg.out.glob("imagenet-*")) == before and (cfg.out / "manifest.json").is_file()
    assert main(cli_args(cfg)) == 0  # both sources in one command: fine
    assert main([*cli_args(alov_only), "--overwrite"]) == 0
    assert not list(cfg.out.glob("imagenet-*")) and list(cfg.out.glob("alov-*"))


def test_hand_made_tars_in_out_are_refused_and_removed_files_listed(tmp_path, capsys):
    """A folder of someone's tars (no .build/, no manifest) used to lose them silently to the stale-shard clean-up;
    --overwrite replaces them and the CLI names every file it deleted."""
    cfg = tiny_config(tmp_path)
    cfg.out.mkdir(parents=True)
    mine = cfg.out / "alov-val-000003.tar"
    mine.write_bytes(b"not ours")
    assert main(cli_args(cfg)) == 2
    err = capsys.readouterr().err
    assert "holds shard files that no build of this tool wrote (alov-val-000003.tar" in err and "--overwrite" in err
    assert mine.read_bytes() == b"not ours" and not (cfg.out / ".build").exists()
    assert main([*cli_args(cfg), "--overwrite"]) == 0
    assert "removed from" in (out := capsys.readouterr().out) and "alov-val-000003.tar" in out
    assert not mine.exists()
    assert main(cli_args(cfg)) == 0  # the folder is the builder's now: reruns resume without --overwrite
    assert "removed from" not in capsys.readouterr().out


def test_a_hand_made_tar_in_a_build_folder_is_refused_too(tmp_path, capsys):
    """A build folder (with .build/ and a manifest) can still receive someone's tar: the builder owns only the
    names it has a resume record of or lists in its manifest, so any other shard-named file stops the build."""
    cfg = tiny_config(tmp_path)
    assert main(cli_args(cfg)) == 0
    capsys.readouterr()
    theirs = cfg.out / "alov-train-000007.tar"
    theirs.write_bytes(b"someone's")
    assert main(cli_args(cfg)) == 2
    err = capsys.readouterr().err
    assert "holds shard files that no build of this tool wrote (alov-train-000007.tar" in err and "--overwrite" in err
    assert theirs.read_bytes() == b"someone's" and (cfg.out / "manifest.json").is_file()
    assert main([*cli_args(cfg), "--overwrite"]) == 0 and not theirs.exists()


def test_a_folder_without_its_build_records_resumes_after_a_kill(tmp_path, monkeypatch):
    """A built folder copied without .build/ has only its manifest to say the shards are the builder's; the manifest
    goes when a rebuild starts, so the listed shards get stub records first, and a rebuild killed part way
    resumes instead of calling them someone else's."""
    from pipeline import build_shards

    cfg = replace(tiny_config(tmp_path), shard_size=1)  # one sample per shard: several shards
    first = build(cfg).manifest
    shutil.rmtree(cfg.out / ".build")
    real, calls = build_shards.write_shard, []

    def killed_after_one(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(build_shards, "write_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        build(cfg)
    assert not (cfg.out / "manifest.json").exists() and len(first["shards"]) > 2
    monkeypatch.setattr(build_shards, "write_shard", real)
    assert build(cfg).manifest["shards"] == first["shards"]


def test_annotations_at_other_depths_are_reported(tmp_path):
    """Also inside a linked folder (the listing follows links: so does the search), and a link back up the tree
    is no endless walk."""
    cfg = tiny_config(tmp_path)
    nested = cfg.imagenet_annotations / "ILSVRC2013_train" / "n02"  # ILSVRC2015 layout: two levels down
    nested.mkdir(parents=True)
    (nested / "c.xml").write_text(xml("n02", "c", 64, 48, [(5, 5, 30, 30)]))
    elsewhere = tmp_path / "elsewhere" / "n03"
    elsewhere.mkdir(parents=True)
    (elsewhere / "q.xml").write_text(xml("n03", "q", 64, 48, [(5, 5, 30, 30)]))
    (cfg.imagenet_annotations / "ILSVRC2013_train" / "linked").symlink_to(elsewhere.parent)  # walked before n01
    (elsewhere / "loop").symlink_to(cfg.imagenet_annotations)  # n01's files are not misplaced seen through it
    (cfg.alov_annotations / "stray.ann").write_text("1 5 5 30 5 30 30 5 30\n")
    m = build(cfg).manifest
    assert m["accounting"]["imagenet"]["xml_files"] == {
        "total": 4,
        "written": 2,
        "skipped": {"misplaced_annotation": 2},
    }
    assert skipped_map(m)["det_ann/ILSVRC2013_train/linked/n03/"].startswith("misplaced_annotation: 1 .xml file 3")
    assert m["accounting"]["alov"]["videos"]["skipped"] == {"misplaced_annotation": 1}
    skipped = skipped_map(m)
    assert skipped["det_ann/ILSVRC2013_train/n02/"].startswith("misplaced_annotation: 1 .xml file 2 folder levels")
    assert skipped["alov_ann/"].startswith("misplaced_annotation: 1 .ann file directly in the annotation root")


def test_non_regular_files_are_skipped_not_read(tmp_path):
    cfg = tiny_config(tmp_path)
    (cfg.imagenet_annotations / "n01" / "fifo.xml").write_text(xml("n01", "fifo", 64, 48, [(5, 5, 30, 30)]))
    os.mkfifo(cfg.imagenet_images / "n01" / "fifo.JPEG")  # open() of a FIFO blocks until a writer comes
    frame = cfg.alov_frames / "01-Light" / "01-Light_video00001" / "00000003.jpg"
    frame.unlink()
    os.mkfifo(frame)
    with deadline(120):  # a hang guard, not a timing: opening a FIFO blocks forever
        m = build(cfg).manifest
    skipped = skipped_map(m)
    assert skipped["det_img/n01/fifo.JPEG"].startswith("not_regular_file: a FIFO (named pipe), referenced by")
    assert skipped["alov_frames/01-Light/01-Light_video00001/00000003.jpg"].startswith("not_regular_file: frame 3")
    assert m["accounting"]["imagenet"]["xml_files"]["skipped"] == {"not_regular_file": 1}
    assert m["accounting"]["alov"]["pairs"] == {"total": 3, "written": 1, "skipped": {"not_regular_file": 2}}
    with pytest.raises(ImageRejected, match="not_regular_file"), deadline(60):
        read_image_file(str(frame))  # the workers' own guard, should a file change after planning


def test_odd_annotation_entries_are_counted_skips(tmp_path):
    """Entries named like annotations that are no readable file (a FIFO, a dangling link, a symlink loop, a
    folder) were dropped without a trace or ended the build; a looping frame link lost its whole video."""
    cfg = tiny_config(tmp_path)
    det, cat = cfg.imagenet_annotations / "n01", cfg.alov_annotations / "01-Light"
    os.mkfifo(det / "fifo.xml")
    (det / "dangling.xml").symlink_to(det / "gone.xml")
    (det / "loop.xml").symlink_to(det / "loop.xml")
    (det / "folder.xml").mkdir()
    (cat / "loop.ann").symlink_to(cat / "loop.ann")
    frame = cfg.alov_frames / "01-Light" / "01-Light_video00001" / "00000003.jpg"
    frame.unlink()
    frame.symlink_to(frame)
    with deadline(120):  # a hang guard: opening a FIFO blocks forever
        m = build(cfg).manifest
    skipped = skipped_map(m)
    assert skipped["det_ann/n01/fifo.xml"] == "not_regular_file: a FIFO (named pipe), not a regular file"
    assert skipped["det_ann/n01/folder.xml"] == "not_regular_file: a directory, not a regular file"
    assert skipped["det_ann/n01/dangling.xml"].startswith("xml_error: unreadable: No such file")
    assert skipped["det_ann/n01/loop.xml"].startswith("xml_error: unreadable: Too many levels of symbolic links")
    assert m["accounting"]["imagenet"]["xml_files"] == {
        "total": 6,
        "written": 2,
        "skipped": {"not_regular_file": 2, "xml_error": 2},
    }
    assert skipped["alov_ann/01-Light/loop.ann"].startswith("ann_error: [Errno 40] Too many levels of symbolic")
    assert m["accounting"]["alov"]["videos"]["skipped"] == {"ann_error": 1}
    assert m["accounting"]["alov"]["pairs"]["written"] == 1  # frames 1-2 still pair; 3 is reported missing
    assert skipped["alov_frames/01-Light/01-Light_video00001/00000003.jpg"].startswith("missing_frame: frame 3")


def test_file_names_that_give_one_sample_key_are_a_counted_skip(tmp_path):
    """A safe name can equal another name's rewritten form; the build crashed on the duplicate key."""
    from shards.format import make_key

    cfg = tiny_config(tmp_path)
    forged = make_key("imagenet", "n01", "we ird", "obj00").split("/")[2]  # "we_ird_<hash>", itself safe
    for name in ("we ird", forged):
        (cfg.imagenet_images / "n01" / f"{name}.JPEG").write_bytes(jpeg(64, 48))
        (cfg.imagenet_annotations / "n01" / f"{name}.xml").write_text(xml("n01", name, 64, 48, [(5, 5, 30, 30)]))
    m = build(cfg).manifest
    assert m["accounting"]["imagenet"]["xml_files"] == {"total": 4, "written": 3, "skipped": {"duplicate_key": 1}}
    (why,) = [s["reason"] for s in m["skipped"] if s["reason"].startswith("duplicate_key")]
    assert f"imagenet/n01/{forged}/obj00 already made from" in why


def test_a_file_as_out_and_an_edited_resume_record(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    cfg.out.write_text("not a folder")
    assert main(cli_args(cfg)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    cfg.out.unlink()
    first = build(cfg).manifest
    (record,) = [p for p in (cfg.out / ".build").glob("imagenet-*.json")]
    rec = json.loads(record.read_text())
    del rec["bytes"]  # a torn or hand-edited record: that shard is rebuilt, not a KeyError on every rerun
    record.write_text(json.dumps(rec))
    again = build(cfg)
    assert again.manifest["shards"] == first["shards"] and again.shards_reused == len(first["shards"]) - 1


def test_shards_are_rebuilt_after_the_decoders_change(tmp_path, monkeypatch):
    """What is rejected, repaired or re-encoded depends on PIL's and libjpeg-turbo's versions: after either changes,
    a rerun rebuilds its shards instead of keeping ones the new checks might refuse."""
    import simplejpeg

    cfg = tiny_config(tmp_path)
    n = len(build(cfg).manifest["shards"])
    assert build(cfg).shards_reused == n
    monkeypatch.setattr(simplejpeg, "__version__", "0.0.0")
    assert build(cfg).shards_reused == 0
    assert build(cfg).shards_reused == n


def test_a_dead_worker_stops_the_build_with_a_resumable_error(tmp_path):
    cfg = tiny_config(tmp_path)
    script = (
        "import os, sys\n"
        "import pipeline.build_shards as b\n"
        "def die(sample):\n"
        "    os._exit(137)  # what the out-of-memory killer leaves behind\n"
        "b.build_sample = die\n"
        "sys.exit(b.main(sys.argv[1:]))\n"
    )
    cmd = [sys.executable, "-c", script, *cli_args(cfg), "--workers", "2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "worker process died" in done.stderr and "rerun the same command to resume" in done.stderr
    assert not (cfg.out / "manifest.json").exists()


_LOCK_HELD_AT_FORK = threading.Lock()


def _lock_is_free_in_worker(_: int) -> bool:
    """In a forked worker: whether the parent's lock came over free (else it would wait forever)."""
    free = _LOCK_HELD_AT_FORK.acquire(timeout=2)
    if free:
        _LOCK_HELD_AT_FORK.release()
    return free


def test_workers_are_forked_before_the_build_holds_any_lock():
    """The workers fork when the pool is made, not at its first task: by then a progress bar's monitor thread may
    hold a lock at any moment, and a child forked at that moment would wait on its copy forever."""
    from pipeline.workers import OrderedPool

    with OrderedPool(2) as pool, _LOCK_HELD_AT_FORK:  # held when the first task is submitted, as a thread's may be
        assert list(pool.map(_lock_is_free_in_worker, range(4), chunk=1)) == [True] * 4


def test_sixteen_bit_png_keeps_its_gray_levels():
    ramp = np.tile(np.linspace(0, 65535, 100).astype(np.uint16), (20, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    c = check_image(buf.getvalue())
    assert (c.width, c.height, c.converted) == (100, 20, "png_16bit")
    px = np.asarray(Image.open(io.BytesIO(c.data)).convert("L")).astype(int)
    assert np.abs(px - (ramp >> 8)).max() <= 3  # cv2.imread's high byte, not PIL's clip to white
    with pytest.raises(ImageRejected, match="mode F"):
        image_check._reencode(Image.new("F", (4, 4), 1000.5))


@pytest.mark.parametrize("orientations", [(1,), (6,), (1, 6), (6, 1), (1, None), (1, 1)])
def test_every_exif_segment_is_checked(orientations):
    plain = jpeg(40, 30)
    data = with_exif(plain, *orientations)
    c = check_image(data)
    if all(o == 1 for o in orientations):
        assert c.converted is None and c.data == data
    else:  # DALI obeys the last segment, PIL the first: remove them all
        assert c.converted == "exif_orientation" and c.data == plain and not jpeg_header(c.data)[1]


@pytest.mark.parametrize("kind", [{}, {"progressive": True}, {"mode": "L"}, {"mode": "CMYK"}])
def test_jpeg_cut_short_and_closed_with_an_end_marker_is_rejected(kind):
    good = jpeg(200, 150, **kind)
    bad = cut_short(good)
    with Image.open(io.BytesIO(bad)) as im:
        im.load()  # the reason for the check: PIL decodes it without an error (as do DALI and OpenCV)
        assert im.size == (200, 150)
    with pytest.raises(ImageRejected) as e:
        check_image(bad)
    assert e.value.code == "corrupt_image"
    assert e.value.detail.startswith("libjpeg-turbo warns: Corrupt JPEG data: premature end of data segment")
    assert libjpeg_warning(good) is None
    dqt = next(start for marker, start, _ in segments(good) if marker == 0xDB)
    stray = good[:dqt] + b"\0" + good[dqt:]  # a header warning first (simplejpeg raises it even when lenient) ...
    assert libjpeg_warning(stray) == "Corrupt JPEG data: 1 extraneous bytes before marker 0xdb"
    with pytest.raises(ImageRejected, match="premature end of data segment"):
        check_image(cut_short(stray))  # ... is repaired and the file checked again: the truncation is found


@pytest.mark.parametrize(
    "kind", [{}, {"progressive": True}, {"mode": "L", "progressive": True}, {"mode": "CMYK", "progressive": True}]
)
def test_a_jpeg_cut_anywhere_is_rejected_never_a_crash(kind):
    """Cut at every byte, with and without an end marker after the cut: each is an `ImageRejected` (a grey
    progressive file cut inside a scan header used to raise IndexError from the scan walk and end the build)."""
    good = jpeg(64, 48, **kind)
    for n in range(3, len(good) - 2):
        for data in (good[:n], good[:n] + b"\xff\xd9"):
            with pytest.raises(ImageRejected):
                check_image(data)
            assert all(end <= len(data) for _, _, end in segments(data))


def test_mutated_jpegs_are_rejected_or_accepted_never_a_crash():
    """Seeded fuzzing of the header region (where the builder's own parsing runs): bytes changed, cut out or put
    in, sometimes then cut short. Whatever libjpeg, PIL or the scan walk make of it, `check_image` raises nothing
    but `ImageRejected`, and what it accepts decodes to RGB."""
    rnd = random.Random(7)
    seeds = [jpeg(48, 40, mode=m, progressive=p) for m in ("RGB", "L", "CMYK") for p in (False, True)]
    accepted = 0
    for _ in range(600):
        d = bytearray(rnd.choice(seeds))
        header_end = d.find(b"\xff\xda") + 30
        for _ in range(rnd.randint(1, 4)):
            at, op = rnd.randrange(2, min(len(d), header_end + 200)), rnd.random()
            if op < 0.5:
                d[at] = rnd.randrange(256)
            elif op < 0.75:
                del d[at : at + rnd.randint(1, 8)]
            else:
                d[at:at] = rnd.randbytes(rnd.randint(1, 4))
        if rnd.random() < 0.3:
            d = d[: rnd.randrange(4, len(d))] + (b"\xff\xd9" if rnd.random() < 0.5 else b"")
        try:
            c = check_image(bytes(d))
        except ImageRejected:
            continue
        accepted += 1
        with Image.open(io.BytesIO(c.data)) as im:
            im.load()
            assert im.mode == "RGB" and im.size == (c.width, c.height)
    assert 20 < accepted < 580  # both outcomes seen: the fuzzing neither broke nor spared every file


def test_a_jpeg_missing_only_its_end_marker_gets_one():
    """libjpeg's first warning is the same for a file that lacks only its end marker (every pixel there) and one cut
    inside a scan: the marker is added and the file checked again, which tells the two apart."""
    for good in (jpeg(64, 48), jpeg(64, 48, progressive=True)):
        assert good.endswith(b"\xff\xd9") and libjpeg_warning(good[:-2]) == "Premature end of JPEG file"
        c = check_image(good[:-2])
        assert (c.converted, c.data) == ("jpeg_eoi_added", good)
        last_scan = [end for marker, _, end in segments(good) if marker == 0xDA][-1]
        cut = good[: (last_scan + len(good)) // 2]  # inside the last scan's data
        assert libjpeg_warning(cut) == "Premature end of JPEG file"
        with pytest.raises(ImageRejected) as e:
            check_image(cut)
        assert e.value.code == "corrupt_image"


def test_junk_before_the_end_marker_is_reencoded_with_every_pixel():
    good = jpeg(64, 48)
    junky = good[:-2] + b"\0" * 100 + b"\xff\xd9"
    assert TRAILING_JUNK.fullmatch(libjpeg_warning(junky) or "")  # "99 extraneous bytes before marker 0xd9"
    c = check_image(junky)
    assert (c.width, c.height, c.converted) == (64, 48, "jpeg_trailing_junk") and libjpeg_warning(c.data) is None
    decoded = [np.asarray(Image.open(io.BytesIO(d)), dtype=int) for d in (good, c.data)]
    assert np.abs(decoded[0] - decoded[1]).mean() < 2  # the same picture (re-encoded at quality 95)


def test_header_fields_libjpeg_ignores_are_repaired_then_checked_again():
    """Some phone cameras write a sequential scan's Ss/Se/Ah/Al wrongly, some writers a JFIF version 2: libjpeg
    warns, then decodes around them. Tolerating the warning would hide the next one (only the first is known), so
    the fields are set to what libjpeg assumes and the file is checked again."""
    good = jpeg(64, 48)
    sos_end = next(end for marker, _, end in segments(good) if marker == 0xDA)
    bad_sos = good[: sos_end - 3] + b"\x00\x00\x00" + good[sos_end:]  # Se = 0
    app0 = next(start for marker, start, _ in segments(good) if marker == 0xE0)
    assert good[app0 + 4 : app0 + 11] == b"JFIF\0\x01\x01"
    jfif2 = good[: app0 + 9] + b"\x02" + good[app0 + 10 :]
    dqt = next(start for marker, start, _ in segments(good) if marker == 0xDB)
    stray = good[:dqt] + b"\0\0" + good[dqt:]  # as after a segment whose length field undercounts
    pixels = np.asarray(Image.open(io.BytesIO(good)))
    for data, warning in (
        (bad_sos, "Invalid SOS parameters"),
        (jfif2, "unknown JFIF revision number 2.01"),
        (stray, "2 extraneous bytes before marker 0xdb"),
    ):
        assert warning in libjpeg_warning(data)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)  # decoders ignore the fields
        c = check_image(data)
        assert c.converted == "jpeg_header_repaired" and c.data == good  # exactly the header PIL wrote
    assert check_image(with_exif(bad_sos, 6)).converted == "jpeg_header_repaired,exif_orientation"
    stray_between_exif = good[:2] + exif_segment(1) + b"\0\0" + exif_segment(6) + good[2:]
    c = check_image(stray_between_exif)  # the repair moves the second Exif segment, which then goes
    assert c.converted == "jpeg_header_repaired,exif_orientation" and c.data == good
    with pytest.raises(ImageRejected, match="premature end of data segment"):
        check_image(cut_short(bad_sos))  # the repair does not let a truncation through


def test_sampling_factors_turbojpeg_cannot_name_are_checked_by_pil():
    """TurboJPEG (simplejpeg) refuses sampling factors it has no name for (3x1 luma here), which libjpeg's own API
    (PIL's, DALI's) decodes: such a file is validated by PIL's full decode and copied, as before the strict check."""
    odd = flat_jpeg(64, 48, [(3, 1), (1, 1), (1, 1)])
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x00\x01\x00\x00\x01\x00\x01\x00\x00"  # JFIF 0.01: libjpeg warns
    for data in (odd, odd[:2] + app0 + odd[2:]):  # with a warning, simplejpeg's lenient header read: KeyError(-1)
        with pytest.raises(LibjpegCannotCheck, match="subsampling"):
            libjpeg_warning(data)
        c = check_image(data)
        assert (c.width, c.height, c.converted) == (64, 48, None) and c.data == data
    from pipeline.sample_build import meta_bytes, npy_bytes
    from shards.verify import check_sample

    meta = {"key": "imagenet/a/b", "source": "imagenet", "split": "train", "width": 64, "height": 48}
    boxes = npy_bytes(np.array([[1, 2, 30, 20]], np.float32))
    still = {"boxes.npy": boxes, "curr.jpg": odd, "meta.json": meta_bytes(meta)}
    assert check_sample("imagenet/a/b", still, "imagenet", "train") == []  # verify: PIL's full decode too
    cut = {**still, "curr.jpg": odd[: len(odd) // 2]}
    assert "curr.jpg does not decode" in check_sample("imagenet/a/b", cut, "imagenet", "train")[0]
    with pytest.raises(ImageRejected) as e:
        check_image(odd[: len(odd) // 2])
    assert e.value.code == "corrupt_image"


def test_a_jpeg_cut_at_a_scan_boundary_is_rejected_by_builder_and_verify():
    """Cut exactly before a scan and closed with EOI, a JPEG decodes with no warning in any decoder (blurred, or
    without colour); its scan headers tell."""
    from pipeline.sample_build import meta_bytes, npy_bytes
    from shards.verify import check_sample

    meta = meta_bytes({"key": "imagenet/a/b", "source": "imagenet", "split": "train", "width": 64, "height": 48})
    boxes = npy_bytes(np.array([[1, 2, 30, 20]], np.float32))
    for good in (
        jpeg(64, 48, progressive=True),
        jpeg(64, 48, progressive=True, mode="L"),
        flat_jpeg(64, 48, [(1, 1)] * 3, scans=3),  # sequential, one scan per component
    ):
        assert check_image(good).width == 64
        scans = [start for marker, start, _ in segments(good) if marker == 0xDA]
        assert len(scans) >= 3
        for start in scans[1:]:
            cut = good[:start] + b"\xff\xd9"
            assert libjpeg_warning(cut) is None and Image.open(io.BytesIO(cut)).getbbox() is not None  # decodes
            with pytest.raises(ImageRejected, match="incomplete JPEG: .* a scan boundary"):
                check_image(cut)
            if Image.open(io.BytesIO(cut)).mode == "RGB":
                members = {"boxes.npy": boxes, "curr.jpg": cut, "meta.json": meta}
                problems = check_sample("imagenet/a/b", members, "imagenet", "train")
                assert len(problems) == 1 and "incomplete JPEG" in problems[0]


def test_pil_pixel_limit_follows_max_pixels(monkeypatch):
    monkeypatch.setattr(image_check, "MAX_PIXELS", 4000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # PIL's own limit below ours (its default: 89.5 MP)
    assert check_image(jpeg(60, 50)).width == 60  # 3000 pixels: within MAX_PIXELS, so valid
    for w, h in ((80, 60), (100, 100)):  # above MAX_PIXELS (PIL warns), above twice that (PIL raises)
        with pytest.raises(ImageRejected) as e:
            check_image(jpeg(w, h))
        assert e.value.code == "image_too_large"
    assert Image.MAX_IMAGE_PIXELS == 2000  # restored for other users of PIL


def test_manifest_does_not_depend_on_workers(tmp_path):
    cfg = tiny_config(tmp_path, shard_size=1)
    one = build(cfg)
    first = (cfg.out / "manifest.json").read_bytes()
    shutil.rmtree(cfg.out)
    two = build(replace(cfg, workers=2))
    assert (one.workers, two.workers, two.shards_written) == (1, 2, len(two.manifest["shards"]))
    assert (cfg.out / "manifest.json").read_bytes() == first
    assert "workers" not in one.manifest["arguments"]


def test_absurd_numbers_in_inputs_are_skips_not_crashes(tmp_path):
    """A 400-digit <width> (OverflowError), an ALOV frame named '².jpg' (int() ValueError) or '99999999999.jpg'
    (a 10^11-long list of missing frames) each used to end the build with a traceback or exhaust memory."""
    from pipeline.alov import FrameIndex
    from pipeline.imagenet_det import atoi

    assert [atoi(t) for t in ("1" + "0" * 400, " 42abc", "-7", "3000000000", "²")] == [None, 42, -7, None, None]
    index = FrameIndex([("00000001.jpg", 1, 1), ("00000003.jpg", 1, 1), ("99999999999.jpg", 1, 1), ("².jpg", 1, 1)])
    assert index.missing_numbers() == [2]
    cfg = tiny_config(tmp_path)
    (cfg.imagenet_annotations / "n01" / "a.xml").write_text(xml("n01", "a", 10**400, 48, [(5, 5, 30, 30)]))
    video = cfg.alov_frames / "01-Light" / "01-Light_video00001"
    (video / "².jpg").write_bytes(jpeg(64, 48))
    (video / "99999999999.jpg").write_bytes(jpeg(64, 48))
    m = build(cfg).manifest
    assert m["accounting"]["imagenet"]["xml_files"]["skipped"] == {"xml_error": 1}
    assert m["counts"]["alov"]["train"]["pairs"] > 0
