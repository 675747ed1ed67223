"""The OTB loader on generated OTB-format folders holding every quirk of formats_and_eval.md section 1, and
against got10k 0.1.3's own loader on the same tree."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluate import otb_data as D


def _jpeg(mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 6), 128 if mode == "L" else (200, 30, 60)).save(buf, "JPEG")
    return buf.getvalue()


RGB_JPEG = _jpeg()


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.integers(1, 50, n), rng.integers(1, 40, n), rng.integers(5, 30, (n, 2))])


def make_seq(
    root: Path,
    name: str,
    n_img: int,
    gt: dict[str, np.ndarray],
    first: int = 1,
    digits: int = 4,
    delim: str = ",",
    gray: bool = False,
) -> Path:
    """One OTB folder: ``img/`` with ``n_img`` tiny JPEGs numbered from ``first``, and annotation files."""
    d = root / name
    (d / "img").mkdir(parents=True)
    data = _jpeg("L") if gray else RGB_JPEG
    for i in range(first, first + n_img):
        (d / "img" / f"{i:0{digits}d}.jpg").write_bytes(data)
    for fname, rows in gt.items():
        text = "\n".join(delim.join(str(int(v)) for v in r) for r in rows)
        (d / fname).write_text(text + ("\n" if len(rows) else ""))
    return d


@pytest.fixture(scope="module")
def otb_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic OTB root with the quirky sequences (tiny images, real counts where they matter)."""
    root = tmp_path_factory.mktemp("otb")
    g = "groundtruth_rect.txt"
    make_seq(root, "Man", 12, {g: _rows(12, 0)})
    make_seq(root, "Crossing", 10, {g: _rows(10, 1)}, delim="\t")
    make_seq(root, "Spacey", 9, {g: _rows(9, 2)}, delim=" ")
    make_seq(root, "David", 770, {g: _rows(471, 3)})
    make_seq(root, "Football1", 81, {g: _rows(74, 4)})
    make_seq(root, "Freeman3", 474, {g: _rows(460, 5)})
    make_seq(root, "Freeman4", 297, {g: _rows(283, 6)})
    make_seq(root, "Diving", 231, {g: _rows(215, 7)})
    make_seq(root, "Tiger1", 354, {g: _rows(354, 8)})
    make_seq(
        root,
        "Jogging",
        307,
        {"groundtruth_rect.1.txt": _rows(307, 9), "groundtruth_rect.2.txt": _rows(307, 10)},
    )
    make_seq(
        root,
        "Skating2",
        20,
        {"groundtruth_rect.1.txt": _rows(20, 11), "groundtruth_rect.2.txt": _rows(20, 12)},
    )
    make_seq(
        root,
        "Human4",
        15,
        {"groundtruth_rect.1.txt": np.zeros((0, 4)), "groundtruth_rect.2.txt": _rows(15, 13)},
    )
    make_seq(root, "Board", 698, {g: np.vstack([_rows(697, 14), [[0, 0, 0, 0]]])}, digits=5)
    make_seq(root, "BlurCar1", 742, {g: _rows(742, 15)}, first=247)
    make_seq(root, "BlurCar3", 357, {g: _rows(357, 16)}, first=3)
    make_seq(root, "Car1", 11, {g: _rows(11, 17)}, gray=True)
    biker = _rows(30, 18)
    biker[5] = [319, -3, 32, 35]
    biker[6] = [364, 0, 28, 29]
    make_seq(root, "Biker", 30, {g: biker})
    return root


def test_parse_delimiters_and_blank_lines() -> None:
    text = "1,2,3,4\n\n5\t6\t7\t8\r\n9 10  11 12\n13, 14,15 ,16\n"
    np.testing.assert_array_equal(
        D.parse_gt_text(text), [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    )
    with pytest.raises(ValueError, match="expected 4 numbers"):
        D.parse_gt_text("1,2,3\n")


def test_delimiters_on_disk(otb_tree: Path) -> None:
    for name, seed in (("Man", 0), ("Crossing", 1), ("Spacey", 2)):
        s = D.load_sequence(otb_tree / name)
        np.testing.assert_array_equal(s.gt, _rows(len(s), seed))


@pytest.mark.parametrize(
    ("name", "n", "first_file"),
    [
        ("David", 471, "0300.jpg"),
        ("Football1", 74, "0001.jpg"),
        ("Freeman3", 460, "0001.jpg"),
        ("Freeman4", 283, "0001.jpg"),
        ("Diving", 215, "0001.jpg"),
        ("BlurCar1", 742, "0247.jpg"),
        ("BlurCar3", 357, "0003.jpg"),
        ("Board", 698, "00001.jpg"),
    ],
)
def test_frame_windows(otb_tree: Path, name: str, n: int, first_file: str) -> None:
    s = D.load_sequence(otb_tree / name)
    assert len(s.frames) == len(s.gt) == n
    assert s.frames[0].name == first_file
    if name == "David":
        assert s.frames[-1].name == "0770.jpg" and s.first_frame == 300


def test_tiger1_protocols(otb_tree: Path) -> None:
    g = D.load_sequence(otb_tree / "Tiger1", protocol="got10k")
    p = D.load_sequence(otb_tree / "Tiger1", protocol="pysot")
    assert (len(g), len(p)) == (354, 349)
    assert g.frames[0].name == "0001.jpg" and p.frames[0].name == "0006.jpg" and p.first_frame == 6
    np.testing.assert_array_equal(p.gt, g.gt[5:])
    o = D.load_sequence(otb_tree / "Tiger1", protocol="otb")  # the Matlab toolkit's own init-omit
    assert o.frames == p.frames and o.first_frame == 6


def test_two_target_and_human4(otb_tree: Path) -> None:
    d = D.find_sequences(otb_tree, names=["Jogging", "skating2.2", "Human4-2"])
    assert [s.name for s in d.sequences] == ["Jogging-1", "Jogging-2", "Skating2-2", "Human4"]
    j1, j2, sk, h4 = d.sequences
    assert (j1.got10k_name, j1.pysot_name, j2.gt_file) == ("Jogging.1", "Jogging-1", "groundtruth_rect.2.txt")
    np.testing.assert_array_equal(j2.gt, _rows(307, 10))
    np.testing.assert_array_equal(sk.gt, _rows(20, 12))
    assert (h4.got10k_name, h4.pysot_name, h4.gt_file) == ("Human4", "Human4-2", "groundtruth_rect.2.txt")
    assert "jogging_1" in D.name_aliases(j1)


def test_grayscale_expanded(otb_tree: Path) -> None:
    s = D.load_sequence(otb_tree / "Car1")
    with Image.open(s.frames[0]) as im:
        assert im.mode == "L"
    f = D.read_frame(s.frames[0])
    assert f.shape == (6, 8, 3) and f.dtype == np.uint8
    assert np.array_equal(f[..., 0], f[..., 1]) and np.array_equal(f[..., 1], f[..., 2])
    assert D.read_frame(D.load_sequence(otb_tree / "Man").frames[0]).shape == (6, 8, 3)


def test_invalid_rows_kept_with_mask(otb_tree: Path) -> None:
    b = D.load_sequence(otb_tree / "Board")
    assert len(b) == 698 and not b.valid[-1] and b.valid[:-1].all()
    k = D.load_sequence(otb_tree / "Biker")
    assert np.flatnonzero(~k.valid).tolist() == [5, 6]


def test_mismatch_raises(tmp_path: Path) -> None:
    make_seq(tmp_path, "Broken", 5, {"groundtruth_rect.txt": _rows(4, 0)})
    with pytest.raises(ValueError, match="5 frames"):
        D.load_sequence(tmp_path / "Broken")


def test_missing_reported_and_none_found_is_error(otb_tree: Path, tmp_path: Path) -> None:
    d = D.find_sequences(otb_tree, names=["Man", "NoSuchSeq"])
    assert [s.name for s in d.sequences] == ["Man"] and d.missing == ["NoSuchSeq"]
    d = D.find_sequences(otb_tree, version="2013")
    assert "Basketball" in d.missing and "Jogging-1" in [s.name for s in d.sequences]
    assert len(d.sequences) + len(d.missing) == 51
    d = D.find_sequences(otb_tree)  # not full OTB: every folder found
    assert d.mode == "all folders" and "Spacey" in [s.name for s in d.sequences]
    with pytest.raises(FileNotFoundError):
        D.find_sequences(otb_tree, names=["Nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        D.find_sequences(tmp_path / "empty")


def test_a_folder_with_only_empty_annotations_is_reported(tmp_path: Path) -> None:
    make_seq(tmp_path, "Man", 4, {"groundtruth_rect.txt": _rows(4, 0)})
    make_seq(tmp_path, "Biker", 4, {"groundtruth_rect.txt": _rows(4, 1)})
    (tmp_path / "Biker" / "groundtruth_rect.txt").write_text("")
    for d in (D.find_sequences(tmp_path), D.find_sequences(tmp_path, version="2015")):
        assert "Biker (no non-empty groundtruth_rect*.txt)" in d.missing and "Man" in [s.name for s in d.sequences]
    assert D.find_sequences(tmp_path, names=["Man"]).missing == []  # not asked for: not reported


def test_an_unreadable_annotation_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_seq(tmp_path, "Man", 4, {"groundtruth_rect.txt": _rows(4, 0)})

    def denied(path: object, limit: int) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(D, "read_regular", denied)
    with pytest.raises(ValueError, match="groundtruth_rect.txt: cannot read: Permission denied"):
        D.read_annotation_text(tmp_path / "Man" / "groundtruth_rect.txt")


def test_a_raw_two_target_folder_beside_pysots_copies_is_evaluated_once(tmp_path: Path) -> None:
    gts = {"groundtruth_rect.1.txt": _rows(5, 1), "groundtruth_rect.2.txt": _rows(5, 2)}
    for name in ("Jogging", "Jogging-1", "Jogging-2"):  # pysot's copies hold both files, each its own target
        make_seq(tmp_path, name, 5, gts)
    for d in (D.find_sequences(tmp_path), D.find_sequences(tmp_path, names=["Jogging-1"])):
        names = [s.name for s in d.sequences]
        assert len(names) == len(set(names)) and all(s.folder.name == "Jogging" for s in d.sequences)
    assert [s.name for s in D.find_sequences(tmp_path).sequences] == ["Jogging-1", "Jogging-2"]


def test_version_lists_match_got10k() -> None:
    from got10k.datasets import OTB

    vd = OTB._OTB__version_dict
    for ours, theirs in (("2013", 2013), ("2015", 2015), ("tb50", "tb50"), ("tb100", "tb100")):
        assert sorted(D.VERSIONS[ours]) == sorted(vd[theirs])
    assert (
        len(D.expected_targets("2013")),
        len(D.expected_targets("2015")),
        len(D.expected_targets("tb50")),
    ) == (
        51,
        100,
        50,
    )
    assert len(D.VERSIONS["2013"]) == 50 and len(D.VERSIONS["tb50"]) == 49 and len(D.VERSIONS["2015"]) == 98


def test_matches_got10k_loader(otb_tree: Path) -> None:
    """got10k's OTB class (download off) yields the same frame lists and annotations for every target."""
    from got10k.datasets import OTB

    ds = OTB(str(otb_tree), 2015, download=False)
    ours = {s.got10k_name: s for s in D.find_sequences(otb_tree, version="2015").sequences}
    assert set(ours) == set(ds.seq_names)
    for name in ds.seq_names:
        img_files, anno = ds[name]
        s = ours[name]
        assert [Path(p) for p in img_files] == list(s.frames), name
        np.testing.assert_array_equal(anno, s.gt)


def test_hidden_files_bom_and_bad_tokens(tmp_path: Path) -> None:
    """Archives made on macOS carry ``._0001.jpg`` resource forks (got10k's glob skips them); Windows editors
    write a UTF-8 byte-order mark; a bad token must name the file and line."""
    rows = _rows(4, 0)
    d = make_seq(tmp_path, "Mac", 4, {"groundtruth_rect.txt": rows})
    (d / "img" / "._0001.jpg").write_bytes(b"\x00\x05\x16\x07")
    (d / "groundtruth_rect.txt").write_text("\ufeff" + (d / "groundtruth_rect.txt").read_text(), encoding="utf-8")
    s = D.load_sequence(d)
    assert [p.name for p in s.frames] == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"]
    np.testing.assert_array_equal(s.gt, rows)
    assert [t.name for t in D.find_sequences(tmp_path).sequences] == ["Mac"]

    (d / "groundtruth_rect.txt").write_text("1,2,3,4\n5,6,7,8\n1,2,3,x\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"groundtruth_rect\.txt:3: not a number in '1,2,3,x'"):
        D.load_sequence(d)
    with pytest.raises(ValueError, match=r"no target 'Mac-2'; targets: Mac"):
        D.load_sequence(d, name="Mac-2")


def test_frames_are_ordered_by_number_and_unreadable_ones_named(tmp_path: Path) -> None:
    """A folder of ``1.jpg ... 12.jpg`` plays 1, 2, ..., 12 (a plain sort would go 1, 10, 11, 12, 2); a corrupt
    frame raises `FrameReadError` naming its file."""
    for i in range(1, 13):
        Image.new("RGB", (8, 6), (i, 0, 0)).save(tmp_path / f"{i}.jpg")
    assert [p.name for p in D.list_images(tmp_path)] == [f"{i}.jpg" for i in range(1, 13)]
    (tmp_path / "13.jpg").write_bytes(b"not a jpeg")
    assert D.frame_size(tmp_path / "1.jpg") == (8, 6)
    for read in (D.read_frame, D.frame_size):
        with pytest.raises(D.FrameReadError, match=r"13\.jpg: cannot read the frame"):
            read(tmp_path / "13.jpg")


def test_16bit_frames_keep_their_high_byte_and_float_frames_are_named(tmp_path: Path) -> None:
    """A 16-bit PNG frame reads as the shard builder and the tracker read it (`model.image_modes.to_rgb8`),
    not clipped to white above 255 as ``convert("RGB")`` would."""
    a16 = np.array([[0, 255, 256, 4097], [32768, 65535, 1000, 20000]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "0001.png")
    got = D.read_frame(tmp_path / "0001.png")
    assert got.shape == (2, 4, 3)
    np.testing.assert_array_equal(got, np.repeat((a16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2))
    Image.fromarray(a16.astype(np.float32), "F").save(tmp_path / "0002.tif")
    with pytest.raises(D.FrameReadError, match=r"0002\.tif: cannot read the frame.*mode F"):
        D.read_frame(tmp_path / "0002.tif")


def test_pysot_copies_of_two_target_folders(tmp_path: Path) -> None:
    """pysot's testing_dataset README copies Jogging to Jogging-1/ and Jogging-2/ (each with both annotation
    files): each copy is its own target, not two (which scored four Jogging targets), and --version finds them."""
    gts = {"groundtruth_rect.1.txt": _rows(6, 1), "groundtruth_rect.2.txt": _rows(6, 2)}
    for copy in ("Jogging-1", "Jogging-2"):
        make_seq(tmp_path, copy, 6, gts)
    make_seq(tmp_path, "Man", 5, {"groundtruth_rect.txt": _rows(5, 3)})
    found = D.find_sequences(tmp_path).sequences
    assert [(s.name, s.gt_file) for s in found] == [
        ("Jogging-1", "groundtruth_rect.1.txt"),
        ("Jogging-2", "groundtruth_rect.2.txt"),
        ("Man", "groundtruth_rect.txt"),
    ]
    np.testing.assert_array_equal(found[1].gt, gts["groundtruth_rect.2.txt"])
    d = D.find_sequences(tmp_path, version="2013")
    assert [s.name for s in d.sequences if s.name.startswith("Jogging")] == ["Jogging-1", "Jogging-2"]
    assert "Jogging-1" not in d.missing and "Basketball" in d.missing


def test_a_sequence_named_by_dot_keeps_its_name(otb_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``evaluate.track --sequence .`` from inside David/: the name picks David's frame window and names the
    results (it was "", so David failed its frame count and others wrote ``.txt``)."""
    monkeypatch.chdir(otb_tree / "David")
    seq = D.load_sequence(Path("."))
    assert seq.name == "David" and len(seq.frames) == 471 and seq.frames[0].name == "0300.jpg"
    with pytest.raises(FileNotFoundError, match=f"pass its parent, {otb_tree}, and --sequences David"):
        D.find_sequences(Path("."))  # --otb-root . inside a sequence: the hint had an empty name
    monkeypatch.chdir(otb_tree / "Jogging" / "img")
    assert [t for t, _ in D.target_names(Path(".."))] == ["Jogging-1", "Jogging-2"]


def test_version_names_and_folder_case(tmp_path: Path) -> None:
    """got10k's otb2013 / otb2015 spellings and OTB100 are versions too; copies with lower-case folders
    (``david/``, ``jogging/``) are found by the version lists and named as OTB names them."""
    from evaluate import otb

    assert otb.parse_args(["--version", "OTB100"]).version == "otb100"
    assert D.VERSIONS["otb2015"] == D.VERSIONS["2015"] and D.VERSIONS["otb2013"] == D.VERSIONS["2013"]
    make_seq(tmp_path, "david", 770, {"groundtruth_rect.txt": _rows(471, 3)})
    two = {"groundtruth_rect.1.txt": _rows(6, 1), "groundtruth_rect.2.txt": _rows(6, 2)}
    make_seq(tmp_path, "jogging", 6, two)
    found = D.find_sequences(tmp_path, "OTB2013")
    assert [s.name for s in found.sequences] == ["David", "Jogging-1", "Jogging-2"]
    assert len(found.sequences[0].frames) == 471 and "David" not in found.missing and "Jogging-1" not in found.missing


def test_only_jpg_frames_play_where_there_are_jpgs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = make_seq(tmp_path, "Man", 4, {"groundtruth_rect.txt": _rows(4, 0)})
    Image.new("RGB", (8, 8)).save(d / "img" / "thumbnail.png")
    seq = D.load_sequence(d)
    assert [p.name for p in seq.frames] == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"]
    assert "1 images that are not .jpg left out (thumbnail.png)" in caplog.text
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in (1, 2, 10):
        Image.new("RGB", (8, 8)).save(pngs / f"{i}.png")
    assert [p.name for p in D.list_images(pngs)] == ["1.png", "2.png", "10.png"]  # any other sequence plays


def test_a_bad_annotation_line_is_quoted_short() -> None:
    with pytest.raises(ValueError, match="gt.txt:2: expected 4 numbers") as e:
        D.parse_gt_text("1,2,3,4\n" + "5," * 100_000, "gt.txt")  # the whole line was copied into the message
    assert len(str(e.value)) < 200
