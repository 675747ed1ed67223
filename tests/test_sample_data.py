"""The generated sample data is what the real-format readers expect: every file parses in its format, the
manifest's counts are the files' counts, the bad inputs are really bad (and absent without the flag), and the
output is a pure function of the seed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from PIL import Image

from model.geometry import alov_points_to_corners, xywh_to_corners
from pipeline import make_sample_data as msd

DET = "imagenet/ILSVRC2014_DET_train"
BBOX = "imagenet/ILSVRC2014_DET_bbox_train"
IMGS = "alov/imagedata++"
ANNS = "alov/alov300++_rectangleAnnotation_full"
ANN_LINE = re.compile(r"^\d+( \d+\.\d\d){8}$")


@pytest.fixture(scope="session")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample_clean")
    return root, msd.make_sample_data(root, seed=0, size="small")


@pytest.fixture(scope="session")
def flagged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample_bad")
    return root, msd.make_sample_data(root, seed=0, size="small", with_bad_inputs=True)


def tree_digest(root: Path, skip: set[str] = frozenset()) -> str:
    """sha256 over every (relative path, bytes) in sorted order, leaving out ``skip`` and what is under it."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(rel == s or rel.startswith(s + "/") for s in skip):
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def goturn_status(box: tuple[int, ...], w: int, h: int) -> str:
    """loader_imagenet_det.cpp's filters in its order (size first), written out independently of the generator."""
    x1, y1, x2, y2 = box
    if x2 - x1 > 0.66 * w or y2 - y1 > 0.66 * h:
        return "too_large"
    return "invalid" if (x1 < 0 or y1 < 0 or x2 <= x1 or y2 <= y1) else "kept"


def read_ann(path: Path) -> np.ndarray:
    return np.array([[float(t) for t in line.split()] for line in path.read_text().splitlines()])


def read_otb(path: Path) -> tuple[np.ndarray, str]:
    text = path.read_text()
    delim = "\t" if "\t" in text else ","
    return np.array([[int(t) for t in line.split(delim)] for line in text.splitlines()]), delim


def gradient_ratio(img: Image.Image, box: np.ndarray) -> float:
    """Mean gradient magnitude inside the box over outside it: > 1 when the textured object is in the box."""
    a = np.asarray(img.convert("L"), np.float32)
    g = np.abs(np.diff(a, axis=1))[:-1] + np.abs(np.diff(a, axis=0))[:, :-1]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    inside = np.zeros(g.shape, bool)
    inside[y1:y2, x1:x2] = True
    return float(g[inside].mean() / g[~inside].mean())


# ------------------------------------------------------------------------------------------------------------


def test_manifest_on_disk_is_the_returned_one(clean):
    root, m = clean
    assert json.loads((root / "sample_manifest.json").read_text()) == m
    assert m["complete"] and m["seed"] == 0 and m["size"] == "small" and m["bad_inputs"] == []


def test_every_image_decodes_as_baseline_jpeg(clean):
    root, _ = clean
    files = sorted(root.rglob("*.jpg")) + sorted(root.rglob("*.JPEG"))
    assert len(files) > 300
    for p in files:
        assert p.read_bytes()[:2] == b"\xff\xd8", p
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode in ("RGB", "L") and not im.info.get("progressive"), p
            im.load()
            assert min(im.size) >= 240 and max(im.size) <= 480


def test_imagenet_xml_parses_and_counts_match(clean):
    root, m = clean
    mi = m["imagenet"]
    statuses, n_images, n_empty, n_gray, n_trunc = [], 0, 0, 0, 0
    xmls = sorted((root / BBOX).glob("*/*.xml"))
    assert {p.parent.name for p in xmls} == set(mi["synsets"]) | {mi["extra_folder"]}
    assert len(list((root / DET).glob("*/*.JPEG"))) == len(xmls)  # one image per annotation, nothing else
    for x in xmls:
        text = x.read_text()
        assert text.startswith("<annotation>\n\t<folder>")  # ILSVRC's layout: no XML declaration,
        assert text.endswith("</annotation>")  # no final newline
        ann = etree.parse(str(x)).getroot()
        tags = [c.tag for c in ann]
        assert tags[:5] == ["folder", "filename", "source", "size", "segmented"]
        assert set(tags[5:]) <= {"object"}
        folder, name = ann.findtext("folder"), ann.findtext("filename")
        assert (folder, name) == (x.parent.name, x.stem) and ann.findtext("source/database") == "ILSVRC_2014"
        W, H = int(ann.findtext("size/width")), int(ann.findtext("size/height"))
        assert ann.findtext("size/depth") == "3" and ann.findtext("segmented") == "0"
        with Image.open(root / DET / folder / f"{name}.JPEG") as im:
            assert im.size == (W, H)
            gray = im.mode == "L"
        objs = ann.findall("object")
        if folder == mi["extra_folder"]:
            assert not objs and not gray
            continue
        n_images += 1
        n_empty += not objs
        n_gray += gray
        for o in objs:
            assert [c.tag for c in o] == ["name", "pose", "truncated", "difficult", "bndbox"]
            assert re.fullmatch(r"n\d{8}", o.findtext("name"))
            assert [c.tag for c in o.find("bndbox")] == ["xmin", "ymin", "xmax", "ymax"]
            box = tuple(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            st = goturn_status(box, W, H)
            statuses.append(st)
            n_trunc += o.findtext("truncated") == "1"
            broken = box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]  # too large *and* broken:
            if not broken:  # "too_large" (the size rule comes first); sound boxes are 0-based, within size - 1
                assert 0 <= box[0] < box[2] <= W - 1 and 0 <= box[1] < box[3] <= H - 1
    assert n_images == mi["images"] and n_empty == mi["images_without_objects"]
    assert n_gray == mi["images_grayscale"] and n_trunc == mi["objects_truncated"]
    assert len(statuses) == mi["objects"]
    for st in ("kept", "too_large", "invalid"):
        assert statuses.count(st) == mi[f"objects_{st}"] > 0
    assert mi["pairs"] == mi["objects_kept"]
    assert len(list((root / DET / mi["extra_folder"]).glob("*.JPEG"))) == mi["extra_images"] > 0
    assert n_empty > 0 and n_gray > 0 and len(statuses) > n_images  # negatives, grayscale, several objects


def test_alov_layout_annotations_and_counts(clean):
    root, m = clean
    ma = m["alov"]
    assert sorted(p.name for p in (root / ANNS).iterdir()) == ma["categories"]
    assert sorted(p.name for p in (root / IMGS).iterdir()) == ma["categories"]
    per = {v["video"]: v for v in ma["per_video"]}
    anns = sorted((root / ANNS).glob("*/*.ann"))
    assert [a.stem for a in anns] == sorted(per) and len(anns) == ma["videos"]
    motion, frames_total, annotated, gray_frames = [], 0, 0, 0
    for a in anns:
        v = per[a.stem]
        assert re.fullmatch(re.escape(a.parent.name) + r"_video\d{5}", a.stem)
        frames = sorted((root / IMGS / a.parent.name / a.stem).iterdir())
        T = len(frames)
        assert [f.name for f in frames] == [f"{i:08d}.jpg" for i in range(1, T + 1)]
        assert v["frames"] == T
        lines = a.read_text().splitlines()
        assert a.read_text().endswith("\n") and all(ANN_LINE.match(line) for line in lines), a
        rows = read_ann(a)
        assert list(rows[:, 0].astype(int)) == list(range(1, T + 1, 5))
        ax, ay, bx, by, cx, cy, dx, dy = rows[:, 1:].T  # the real file's order: (x2,y1) (x1,y1) (x1,y2) (x2,y2)
        assert np.all((ax == dx) & (bx == cx) & (ay == by) & (cy == dy) & (ax > bx) & (cy > ay))
        boxes = alov_points_to_corners(rows[:, 1:])
        with Image.open(frames[0]) as im:
            W, H = im.size
            gray = im.mode == "L"
            assert gradient_ratio(im, boxes[0]) > 1.2, a  # the object is where the annotation says
        assert (v["width"], v["height"]) == (W, H) and gray == v["grayscale"]
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= W) and np.all(boxes[:, 3] <= H)
        size = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        assert size.min() > 15
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        motion += list(np.linalg.norm(np.diff(centres, axis=0), axis=1) / size[:-1])
        frames_total += T
        annotated += len(rows)
        gray_frames += T * gray
        assert v["annotated_frames"] == len(rows) and v["pairs"] == len(rows) - 1
    assert (frames_total, annotated, gray_frames) == (
        ma["frames"],
        ma["annotated_frames"],
        ma["frames_grayscale"],
    )
    assert ma["pairs"] == annotated - ma["videos"] and gray_frames > 0
    # learnable: between annotations 5 frames apart objects move a few tenths of their size
    assert 0.1 < float(np.median(motion)) < 0.8
    for cat in ma["categories"]:  # GOTURN's split: the last int(0.2 n) videos of each category validate
        vids = sorted(v["video"] for v in ma["per_video"] if v["category"] == cat)
        n_val = int(0.2 * len(vids))
        assert n_val >= 1
        assert [per[x]["split"] for x in vids] == ["train"] * (len(vids) - n_val) + ["val"] * n_val
    assert ma["val_videos"] + ma["train_videos"] == ma["videos"]


def test_otb_sequences(clean):
    root, m = clean
    mo = m["otb"]
    per = {s["name"]: s for s in mo["per_sequence"]}
    seqs = sorted(p for p in (root / "otb").iterdir())
    assert [p.name for p in seqs] == sorted(per) and len(seqs) == mo["sequences"]
    delims, total = set(), 0
    for s in seqs:
        frames = sorted((s / "img").iterdir())
        assert [f.name for f in frames] == [f"{i:04d}.jpg" for i in range(1, len(frames) + 1)]
        gt, delim = read_otb(s / "groundtruth_rect.txt")
        assert gt.shape == (len(frames), 4) == (per[s.name]["frames"], 4)
        delims.add(delim)
        assert per[s.name]["delimiter"] == {",": "comma", "\t": "tab"}[delim]
        modes = set()
        for f in frames:
            with Image.open(f) as im:
                modes.add(im.mode)
                W, H = im.size
        assert modes == ({"L"} if per[s.name]["grayscale"] else {"RGB"})
        x, y, w, h = gt.T  # 1-based, inside the image
        assert np.all((x >= 1) & (y >= 1) & (w >= 1) & (h >= 1) & (x + w - 1 <= W) & (y + h - 1 <= H))
        with Image.open(frames[0]) as im:
            assert gradient_ratio(im, xywh_to_corners(gt[0], one_based=True)) > 1.2
        # the object moves: staying at the first box would lose it
        c = xywh_to_corners(gt, one_based=True)
        travel = np.linalg.norm((c[-1, :2] + c[-1, 2:]) / 2 - (c[0, :2] + c[0, 2:]) / 2)
        assert travel > 0.5 * np.sqrt(w[0] * h[0])
        total += len(frames)
    assert delims == {",", "\t"} and total == mo["frames"]
    assert mo["sequences_grayscale"] == sum(s["grayscale"] for s in per.values()) >= 1


def test_no_bad_inputs_without_the_flag(clean):
    root, m = clean
    assert m["bad_inputs"] == [] and not m["with_bad_inputs"]
    assert not (root / IMGS / msd.BAD_CATEGORY).exists() and not (root / ANNS / msd.BAD_CATEGORY).exists()
    assert not list(root.rglob("*_9000*"))  # (.ann lines and frame gaps: checked for every video above)


def test_bad_inputs_are_present_and_really_bad(flagged):
    root, m = flagged
    bad = {e["kind"]: e for e in m["bad_inputs"]}
    assert set(bad) == set(msd.BAD_EXPECT) and len(m["bad_inputs"]) == 7
    for e in m["bad_inputs"]:
        assert (root / e["path"]).exists() != (e["kind"] == "alov_missing_frame"), e

    with Image.open(root / bad["truncated_jpeg"]["path"]) as im:
        assert im.format == "JPEG"
        with pytest.raises(OSError):
            im.load()
    png = root / bad["png_as_jpeg"]["path"]
    assert png.suffix == ".JPEG" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cmyk = root / bad["cmyk_jpeg"]["path"]
    assert cmyk.read_bytes()[:2] == b"\xff\xd8"
    with Image.open(cmyk) as im:
        assert im.mode == "CMYK"
        im.load()
    with pytest.raises(etree.XMLSyntaxError):
        etree.parse(str(root / bad["malformed_xml"]["path"]))
    assert (root / bad["malformed_xml"]["image"]).is_file()

    vid = etree.parse(str(root / bad["vid_order_xml"]["path"])).getroot()
    objs = vid.findall("object")
    assert len(objs) == bad["vid_order_xml"]["objects"] > 0
    W, H = int(vid.findtext("size/width")), int(vid.findtext("size/height"))
    statuses = []
    for o in objs:  # valid: read by tag name it gives the same boxes as the usual order
        assert [c.tag for c in o.find("bndbox")] == ["xmax", "xmin", "ymax", "ymin"]
        statuses.append(
            goturn_status(tuple(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")), W, H)
        )
    assert statuses.count("kept") == bad["vid_order_xml"]["objects_kept"]

    e = bad["ann_malformed_line"]
    lines = (root / e["path"]).read_text().splitlines()
    broken = [i for i, line in enumerate(lines, 1) if not ANN_LINE.match(line)]
    assert broken == [e["line"]] and len(lines[e["line"] - 1].split()) != 9
    assert lines[e["line"] - 1].split()[0] == str(e["frame"])
    assert len(list((root / e["images"]).glob("*.jpg"))) == e["frames"]

    e = bad["alov_missing_frame"]
    frames = sorted(p.name for p in (root / e["images"]).glob("*.jpg"))
    assert len(frames) == e["frames"] - 1 and f"{e['frame']:08d}.jpg" not in frames
    assert f"{e['frame'] - 1:08d}.jpg" in frames and f"{e['frame'] + 1:08d}.jpg" in frames
    assert str(e["frame"]) in [line.split()[0] for line in (root / e["ann"]).read_text().splitlines()]


def test_bad_inputs_leave_the_clean_part_untouched(clean, flagged):
    (croot, cm), (froot, fm) = clean, flagged
    skip = {"sample_manifest.json"}
    for e in fm["bad_inputs"]:
        skip |= {e[k] for k in ("path", "image", "xml", "ann", "images") if k in e}
    assert tree_digest(froot, skip) == tree_digest(croot, {"sample_manifest.json"})
    drop = ("with_bad_inputs", "bad_inputs")
    assert {k: v for k, v in fm.items() if k not in drop} == {k: v for k, v in cm.items() if k not in drop}


def test_same_seed_same_bytes_via_cli_and_workers(clean, tmp_path):
    root, _ = clean
    out = tmp_path / "again"
    assert msd.main(["--out", str(out), "--size", "small", "--seed", "0", "--workers", "2", "--quiet"]) == 0
    assert tree_digest(out) == tree_digest(root)


def test_other_seed_differs_and_regeneration_replaces(flagged, tmp_path):
    froot, _ = flagged
    out = tmp_path / "copy"
    shutil.copytree(froot, out)
    m1 = msd.make_sample_data(out, seed=1, size="small")
    assert m1["bad_inputs"] == [] and not list(out.rglob("*_9000*")) and not (out / IMGS / msd.BAD_CATEGORY).exists()
    a = (froot / "otb" / "SynGray" / "img" / "0001.jpg").read_bytes()
    b = (out / "otb" / "SynGray" / "img" / "0001.jpg").read_bytes()
    assert a != b
    assert (froot / "otb/SynGray/groundtruth_rect.txt").read_text() != (
        out / "otb/SynGray/groundtruth_rect.txt"
    ).read_text()


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(FileExistsError):
        msd.make_sample_data(tmp_path, size="small")
    assert (tmp_path / "imagenet").is_dir() and not (tmp_path / "sample_manifest.json").exists()


def test_ensure_reuses_a_matching_tree(clean, monkeypatch):
    root, m = clean

    class Regenerated(Exception):
        pass

    def boom(*a, **k):
        raise Regenerated

    monkeypatch.setattr(msd, "make_sample_data", boom)
    assert msd.ensure_sample_data(root, seed=0, size="small") == m
    with pytest.raises(Regenerated):
        msd.ensure_sample_data(root, seed=1, size="small")


def test_xml_writer_reproduces_real_ilsvrc_files(shared_data):
    """Re-writing each real CLS-LOC XML from its parsed fields gives its exact bytes: ILSVRC's layout."""
    files = sorted((shared_data / "imagenet_xml" / "annotations" / "val").glob("*.xml"))
    assert files
    for f in files:
        ann = etree.parse(str(f)).getroot()
        objs = [
            {
                "name": o.findtext("name"),
                "truncated": int(o.findtext("truncated")),
                "box": tuple(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")),
            }
            for o in ann.findall("object")
        ]
        text = msd.imagenet_xml(
            ann.findtext("folder"),
            ann.findtext("filename"),
            int(ann.findtext("size/width")),
            int(ann.findtext("size/height")),
            objs,
            database=ann.findtext("source/database"),
        )
        assert text.encode() == f.read_bytes(), f.name


def test_otb_writer_reproduces_the_real_man_file(shared_data):
    gt_file = shared_data / "otb" / "Man" / "groundtruth_rect.txt"
    gt, delim = read_otb(gt_file)
    assert msd.otb_rows(xywh_to_corners(gt, one_based=True), delim).encode() == gt_file.read_bytes()
