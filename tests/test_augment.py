"""The DALI training-data pipeline (pipeline.augment) against the geometry module, on DALI's CPU backend.

Shards are written with tests/shardkit.py (format v1). Real JPEGs (ImageNet val, OTB Man) come from
../shared/data via the `shared_data` fixture and skip when absent.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shardkit import Sample, jpeg_bytes, synthetic_samples, textured_image, write_shards

from model import geometry as G
from pipeline.augment import GoturnLoader, SampleDecodeError, find_shards

# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


class Replay:
    """A numpy-Generator stand-in returning given arrays in order (feeds DALI's draws to geometry.shift_boxes)."""

    def __init__(self, arrays):
        self.q = [np.asarray(a, dtype=np.float64) for a in arrays]

    def random(self, shape):
        a = self.q.pop(0)
        assert a.shape == tuple(shape), (a.shape, shape)
        return a


def replay_rng(b: dict, p: int, s: int) -> Replay:
    """geometry's draw order (x: scale u, v, shift u, v; then y) from pair ``p`` of source ``s`` of a batch."""
    arrs = []
    for ax in (0, 1):
        arrs += [b["u_scale"][p, s, ax], b["v_scale"][p, s, ax]]
        arrs += [b["u_shift"][p, s, :, ax].T, b["v_shift"][p, s, :, ax].T]
    return Replay([a.numpy() for a in arrs])


def member(key: str, ext: str) -> bytes:
    """Raw bytes of ``<key>.<ext>`` where key is the loader's audit key '<tar>:<sample key>'."""
    tar, k = key.rsplit(":", 1)
    with tarfile.open(tar) as tf:
        return tf.extractfile(f"{k}.{ext}").read()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def dali_decode(data: bytes) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def p():
        return fn.decoders.image(fn.external_source(name="j", dtype=types.UINT8, ndim=1), output_type=types.RGB)

    pipe = p()
    pipe.build()
    pipe.feed_input("j", [np.frombuffer(data, np.uint8)])
    return np.asarray(pipe.run()[0][0])


def geometry_crops(img: np.ndarray, windows: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    return G.to_uint8(G.crop_and_resize(t, windows)).numpy()


def boxes_of(key: str) -> np.ndarray:
    return np.load(io.BytesIO(member(key, "boxes.npy"))).astype(np.float64)


def first_batches(loader: GoturnLoader, n: int) -> list[dict]:
    out = []
    for i, b in enumerate(loader):
        out.append(b)
        if i + 1 == n:
            break
    return out


def loader(d, **kw) -> GoturnLoader:
    kw.setdefault("num_threads", 2)
    kw.setdefault("pairs_per_batch", 4)
    return GoturnLoader(d, **kw)


# ----------------------------------------------------------------------------------------------------------------
# shard fixtures
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """30 ImageNet-like stills and 14 ALOV-like pairs (small images, random boxes, some at the borders)."""
    d = tmp_path_factory.mktemp("synth")
    write_shards(d, "imagenet", synthetic_samples(30, "imagenet", seed=1, w=160, h=120), per_tar=8)
    write_shards(d, "alov", synthetic_samples(14, "alov", seed=2, w=160, h=120), per_tar=5)
    return d


@pytest.fixture(scope="module")
def real(tmp_path_factory, shared_data) -> Path:
    """Real JPEG bytes: ImageNet val stills (XML boxes + boxes in the corners) and OTB Man frame pairs."""
    d = tmp_path_factory.mktemp("real")
    stills = []
    for xml in sorted((shared_data / "imagenet_xml" / "annotations" / "val").glob("*.xml")):
        root = ET.parse(xml).getroot()
        jpg = shared_data / "imagenet_xml" / "images" / "val" / f"{root.findtext('filename')}.JPEG"
        data = jpg.read_bytes()
        W, H = Image.open(io.BytesIO(data)).size
        boxes = [
            [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")] for o in root.iter("object")
        ]
        boxes += [[0.0, 0.0, 61.5, 40.25], [W - 90.0, H - 33.0, W - 0.5, H]]  # windows leaving the image
        for i, b in enumerate(boxes):
            stills.append(Sample(f"{jpg.stem}_{i}", data, np.array([b], np.float32)))
    man = shared_data / "otb" / "Man"
    gt = G.xywh_to_corners(np.loadtxt(man / "groundtruth_rect.txt", delimiter=","), one_based=True)
    frames = sorted((man / "img").glob("*.jpg"))
    pairs = [
        Sample(
            f"man_{i:04d}",
            frames[i + 5].read_bytes(),
            np.stack([gt[i], gt[i + 5]]).astype(np.float32),
            prev=frames[i].read_bytes(),
        )
        for i in range(0, 120, 4)
    ]
    write_shards(d, "imagenet", stills, per_tar=16)
    write_shards(d, "alov", pairs, per_tar=16)
    return d


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [(100.0, 50.0, 140.0, 90.0), (10.0, 10.0, 50.0, 30.0)])
def test_no_motion_true_example_is_exact(tmp_path, box):
    """Interior box (and the spec's left/top edge example), no motion: the true target is exactly (2.5, ..)."""
    img = np.full((480, 640, 3), 90, np.uint8)
    b = np.array([box, box], np.float32)
    write_shards(tmp_path, "alov", [Sample(f"s{i}", jpeg_bytes(img), b, prev=jpeg_bytes(img)) for i in range(2)])
    (batch,) = first_batches(loader(tmp_path, pairs_per_batch=2, k=3), 1)
    assert batch["bbox"].shape == (8, 4)
    true = batch["bbox"][0::4]
    assert torch.equal(true, torch.tensor([[2.5, 2.5, 7.5, 7.5]] * 2))


@pytest.mark.parametrize("lambda_shift", [5.0, 0.2])
def test_windows_boxes_targets_equal_geometry(synth, lambda_shift):
    """Feeding DALI's own random draws to geometry.shift_boxes / example_windows reproduces everything (boxes to
    1e-9 px, windows and targets exactly).

    lambda_shift=0.2 makes |d| > 1 common, so the 10-try rejection loop (incl. exhaustion) is exercised.
    """
    motion = G.MotionParams(lambda_shift=lambda_shift)
    ld = loader(synth, pairs_per_batch=8, debug_draws=True, motion=motion)
    tries, n = [], 0
    for b in first_batches(ld, 2):
        e = 11
        for p in range(4):
            for s in range(2):
                j = (p * 2 + s) * e
                key = b["keys"][j]
                bx = boxes_of(key)
                W, H = b["image_size"][j].numpy()
                assert (W, H) == (160, 120)
                ms = G.shift_boxes(bx[-1], W, H, replay_rng(b, p, s), 10, motion)
                ew = G.example_windows(bx[0], bx[-1], W, H, replay_rng(b, p, s), 10, motion)
                tries += [ms.tries_x, ms.tries_y]
                # DALI's log can differ from numpy's in the last bit (~1e-14 px, one box in thousands)
                np.testing.assert_allclose(b["search_boxes"][j + 1 : j + e].numpy(), ms.boxes, rtol=0, atol=1e-9)
                np.testing.assert_array_equal(b["search_boxes"][j].numpy(), bx[0])
                np.testing.assert_array_equal(b["search_windows"][j : j + e].numpy(), ew.search_windows)
                np.testing.assert_array_equal(b["target_windows"][j : j + e].numpy(), np.tile(ew.target_window, (e, 1)))
                np.testing.assert_array_equal(b["bbox"][j : j + e].numpy(), ew.targets.astype(np.float32))
                n += 1
    assert n == 16
    tries = np.concatenate(tries)
    if lambda_shift == 0.2:
        assert (tries > 1).mean() > 0.3 and (tries == 10).any(), ((tries > 1).mean(), (tries == 10).mean())


def test_one_pixel_wide_image_shifts_like_the_cpp(tmp_path):
    """BoundingBox::Shift clamps the new width as max(1, min(W - 1, .)): on a 1 px wide image that is 1 px, where
    np.clip's order gave 0. The DALI graph and the geometry module agree, draw for draw."""
    img = np.random.default_rng(0).integers(0, 255, (40, 1, 3), dtype=np.uint8)
    stills = [Sample(f"s{i}", jpeg_bytes(img), np.array([[0.0, 5.0, 1.0, 25.0]], np.float32)) for i in range(2)]
    write_shards(tmp_path, "imagenet", stills)
    (b,) = first_batches(loader(tmp_path, pairs_per_batch=2, k=5, debug_draws=True), 1)
    for p in range(2):
        j = p * 6
        ms = G.shift_boxes(np.array([0.0, 5.0, 1.0, 25.0]), 1, 40, replay_rng(b, p, 0), 5)
        np.testing.assert_array_equal(b["search_boxes"][j + 1 : j + 6].numpy(), ms.boxes)
        assert (ms.boxes[:, 2] - ms.boxes[:, 0] == 1.0).all()
    assert torch.isfinite(b["bbox"]).all()


def test_motion_statistics_match_geometry_sampler(tmp_path):
    """dx, dy (box widths), scale x/y of 3200 DALI shifts vs 20000 geometry.shift_boxes draws.

    Tolerances: two-sample KS distance < 0.04 (critical value ~0.037 at alpha 0.001 for these n; the fixed seeds
    make the outcome deterministic), means within 0.01 box widths, 5/25/50/75/95% quantiles within 0.02.
    """
    W, H, box = 200, 150, np.array([70.0, 55.0, 110.0, 85.0])
    img = jpeg_bytes(np.full((H, W, 3), 128, np.uint8))
    write_shards(tmp_path, "alov", [Sample(f"m{i}", img, np.stack([box, box]), prev=img) for i in range(64)], 64)
    ld = loader(tmp_path, pairs_per_batch=64, audit=True)
    assert len(ld) == 1
    batches = [b for _ in range(5) for b in ld]  # 5 epochs of one batch, each epoch freshly seeded
    sb = np.concatenate([b["search_boxes"].numpy().reshape(64, 11, 4)[:, 1:] for b in batches])
    dali = sb.reshape(-1, 4)
    ref = G.shift_boxes(box, W, H, np.random.default_rng(123), 20000).boxes
    w, h = box[2] - box[0], box[3] - box[1]

    def feats(bb):
        cx, cy = (bb[:, 0] + bb[:, 2]) / 2, (bb[:, 1] + bb[:, 3]) / 2
        return {
            "dx": (cx - (box[0] + box[2]) / 2) / w,
            "dy": (cy - (box[1] + box[3]) / 2) / h,
            "sx": (bb[:, 2] - bb[:, 0]) / w,
            "sy": (bb[:, 3] - bb[:, 1]) / h,
        }

    fd, fr = feats(dali), feats(ref)
    for name in fd:
        a, r = np.sort(fd[name]), np.sort(fr[name])
        grid = np.concatenate([a, r])
        ks = np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(r, grid, "right") / len(r)).max()
        assert ks < 0.04, (name, ks)
        assert abs(a.mean() - r.mean()) < 0.01, name
        q = [0.05, 0.25, 0.5, 0.75, 0.95]
        np.testing.assert_allclose(np.quantile(a, q), np.quantile(r, q), atol=0.02, err_msg=name)
    assert np.abs(fd["sx"] - 1).max() <= 0.4 + 1e-12  # the +-0.4 scale clamp


# ----------------------------------------------------------------------------------------------------------------
# pixels
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["epoch", "authors"])
def test_crops_equal_geometry_on_real_images(real, sampling):
    """Target and search crops = geometry.crop_and_resize of the decoded frames within 1 grey level, whether DALI's
    reader or the authors' sampler (external source) supplies the bytes."""
    ld = loader(real, pairs_per_batch=10, audit=True, sampling=sampling)
    left, n = 0, 0
    for b in first_batches(ld, 2):
        e = 11
        for p0 in range(0, len(b["keys"]), e):
            key = b["keys"][p0]
            curr_bytes = member(key, "curr.jpg")
            curr = dali_decode(curr_bytes)
            np.testing.assert_array_equal(curr, decode(curr_bytes))  # DALI = PIL (both libjpeg-turbo)
            is_pair = b["source"][p0] == "alov"
            prev = decode(member(key, "prev.jpg")) if is_pair else curr
            sw = b["search_windows"][p0 : p0 + e].numpy()
            tw = b["target_windows"][p0 : p0 + 1].numpy()
            H, W = curr.shape[:2]
            left += int(((sw[:, :2] < 0) | (sw[:, 2:] > [W, H])).any(1).sum())
            ref_s = geometry_crops(curr, sw).astype(int)
            ref_t = geometry_crops(prev, tw).astype(int)
            assert np.abs(b["search"][p0 : p0 + e].numpy().astype(int) - ref_s).max() <= 1
            assert np.abs(b["target"][p0 : p0 + e].numpy().astype(int) - ref_t).max() <= 1
            n += 1
    assert n == 20 and left > 10  # both sources, and many windows reach past the image


def test_grayscale_origin_jpeg(tmp_path):
    """A grayscale JPEG decodes to 3 equal channels and crops like geometry on the replicated image."""
    rng = np.random.default_rng(5)
    g = textured_image(rng, 120, 90, gray=True)
    data = jpeg_bytes(g)
    assert Image.open(io.BytesIO(data)).mode == "L"
    box = np.array([[5.0, 10.0, 60.0, 70.0]], np.float32)
    write_shards(tmp_path, "imagenet", [Sample("g0", data, box), Sample("g1", data, box)])
    (b,) = first_batches(loader(tmp_path, pairs_per_batch=2, audit=True), 1)
    s = b["search"][:11].numpy()
    assert (s[:, 0] == s[:, 1]).all() and (s[:, 1] == s[:, 2]).all()
    ref = geometry_crops(np.repeat(decode(data)[..., :1], 3, -1), b["search_windows"][:11].numpy())
    assert np.abs(s.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("mixed", [False, True])
def test_the_epoch_reader_refuses_boxes_with_the_wrong_number_of_rows(tmp_path, mixed):
    """The graph takes a pair's previous box from the first row and its current box from the last: a pair with
    one row trained as if it never moved, a still with two on a made-up motion (the authors' sampler's feed
    refused them; the epoch reader's batches did not). In a source of stills and pairs the index says which."""
    pr = synthetic_samples(4, "alov", seed=4, w=96, h=72, prefix="pair")
    st = synthetic_samples(4, "imagenet", seed=3, w=96, h=72, prefix="still")
    pr[1].boxes = pr[1].boxes[1:]
    st[2].boxes = np.stack([st[2].boxes[0] * 0.5, st[2].boxes[0]])
    if mixed:
        write_shards(tmp_path, "alov", [x for ab in zip(st, pr, strict=True) for x in ab], per_tar=8)
    else:
        write_shards(tmp_path, "alov", pr, per_tar=4)
        write_shards(tmp_path, "imagenet", st, per_tar=4)
    with pytest.raises(SampleDecodeError) as e:
        list(loader(tmp_path, pairs_per_batch=8, sampling="epoch", shuffle_buffer=0, k=1))
    msg = str(e.value)
    assert "key='pair_000001'" in msg and "boxes.npy holds 1 rows, expected 2 for a pair" in msg
    assert "key='still_000002'" in msg and "boxes.npy holds 2 rows, expected 1 for a still" in msg


def test_stills_and_pairs_in_one_source_and_interleaving(tmp_path):
    """Mixed still/pair tars (per-sample conditional decode) plus the source interleaving and example order."""
    st = synthetic_samples(6, "imagenet", seed=3, w=96, h=72, prefix="still")
    pr = synthetic_samples(6, "alov", seed=4, w=96, h=72, prefix="pair")
    write_shards(tmp_path, "alov", [x for ab in zip(st, pr, strict=True) for x in ab], per_tar=4)
    write_shards(tmp_path, "imagenet", synthetic_samples(12, "imagenet", seed=6, w=96, h=72), per_tar=6)
    (s_alov, s_img) = sorted(find_shards(tmp_path), key=lambda s: s.source)
    assert s_alov.has_pairs and s_alov.has_stills and not s_img.has_pairs
    ld = loader(tmp_path, pairs_per_batch=12, audit=True, debug_draws=True, shuffle_buffer=0)
    (b,) = first_batches(ld, 1)
    assert b["source"][::11] == ["imagenet", "alov"] * 6  # authors' alternation
    assert b["u_shift"].shape == (6, 2, 10, 2, 10)  # the draws also come out of a conditional (AutoGraph) graph
    assert torch.equal(b["example_index"][:22], torch.arange(11).repeat(2))
    kinds = set()
    for p0 in range(11, 132, 22):  # the alov pairs
        key = b["keys"][p0]
        curr = decode(member(key, "curr.jpg"))
        prev_b = member(key, "prev.jpg") if key.rsplit(":", 1)[1].startswith("pair") else None
        prev = decode(prev_b) if prev_b else curr
        kinds.add("pair" if prev_b else "still")
        tw = b["target_windows"][p0 : p0 + 1].numpy()
        assert np.abs(b["target"][p0].numpy().astype(int) - geometry_crops(prev, tw)[0]).max() <= 1
        # the true example's search window is the target window (search at the previous box)
        assert torch.equal(b["search_windows"][p0], b["target_windows"][p0])
        assert torch.equal(b["target"][p0], b["target"][p0 + 10])  # the target crop is repeated per example
    assert kinds == {"pair", "still"}


def test_float_output_equals_trainer_normalisation(synth):
    """output='float' emits exactly what model.preprocess.normalize makes of the uint8 crops."""
    from model.preprocess import normalize

    (u8,) = first_batches(loader(synth, seed=3), 1)
    for mode in ("caffe", "imagenet", "opencv"):
        (fl,) = first_batches(loader(synth, seed=3, output="float", normalization=mode), 1)
        assert fl["search"].dtype == torch.float32
        for name in ("target", "search"):
            torch.testing.assert_close(fl[name], normalize(u8[name], mode), atol=1e-4, rtol=0)
        assert torch.equal(fl["bbox"], u8["bbox"])


# ----------------------------------------------------------------------------------------------------------------
# epochs, ranks, determinism, resume, errors
# ----------------------------------------------------------------------------------------------------------------


def epoch_keys(ld: GoturnLoader) -> list[str]:
    return [k for b in ld for k in b["keys"][:: 1 + ld.k]]


def test_two_ranks_disjoint_and_cover_the_epoch(synth):
    r0, r1 = (loader(synth, audit=True, shard_id=r, num_shards=2, k=0) for r in (0, 1))
    assert len(r0) == len(r1) == (30 // 2) // 2
    for epoch in (0, 1):
        k0, k1 = epoch_keys(r0), epoch_keys(r1)
        assert len(k0) == len(k1) == 2 * 2 * 7
        i0 = {k for k in k0 if "imagenet" in k}
        i1 = {k for k in k1 if "imagenet" in k}
        assert len(i0) == len(i1) == 14 and not i0 & i1  # disjoint, no repeats within an epoch
        assert len(i0 | i1) == 28  # all 30 but each rank's last sample of its 15
        a0 = {k for k in k0 if "alov" in k}
        a1 = {k for k in k1 if "alov" in k}
        assert len(a0) == len(a1) == 7 and not a0 & a1  # the smaller source: each rank cycles its own half
        if epoch == 0:
            first = i0
    assert r0.epoch == 2 and first != i0  # ranks move to the other half in the next epoch


def test_each_epoch_reads_the_tars_in_a_new_order(synth):
    """DALI's shuffle buffer only mixes neighbours: without a new tar order every epoch repeated the last one."""
    ld = loader(synth, audit=True, k=0, shuffle_buffer=1)  # no buffer: the order is the tars' order
    e0, e1 = ([k for k in epoch_keys(ld) if "imagenet" in k] for _ in range(2))
    assert e0 != e1 and len(set(e0) & set(e1)) >= len(e0) - 2  # the same samples (bar the tails), reordered


@pytest.mark.parametrize("sampling", ["epoch", "authors"])
def test_same_seed_same_batches(synth, sampling):
    a = first_batches(loader(synth, seed=7, audit=True, sampling=sampling), 2)
    b = first_batches(loader(synth, seed=7, audit=True, num_threads=1, sampling=sampling), 2)
    c = first_batches(loader(synth, seed=8, audit=True, sampling=sampling), 1)
    for x, y in zip(a, b, strict=True):
        for name in ("target", "search", "bbox", "search_windows"):
            assert torch.equal(x[name], y[name]), name
        assert x["keys"] == y["keys"]
    assert not torch.equal(a[0]["bbox"], c[0]["bbox"])


@pytest.mark.parametrize("sampling", ["epoch", "authors"])
@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_resume_mid_epoch(synth, with_checkpoint, sampling):
    ref = loader(synth, seed=4, audit=True, sampling=sampling)
    it = iter(ref)
    next(it), next(it)
    state = ref.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 2) and state["dali_checkpoint"]
    want = next(it)
    if not with_checkpoint:
        state = {**state, "dali_checkpoint": None}
    other = loader(synth, seed=4, audit=True, sampling=sampling)
    other.load_state_dict(state)
    assert other.state_dict()["dali_checkpoint"] == state["dali_checkpoint"]  # pending restore is passed on
    got = next(iter(other))
    assert got["keys"] == want["keys"]
    for name in ("target", "search", "bbox"):
        assert torch.equal(got[name], want[name]), name
    assert (other.epoch, other.batch) == (0, 3)


def grouped_shards(d: Path) -> None:
    """ImageNet: image ``one`` with 1 object, image ``four`` with 4; ALOV: video ``short`` with 1 pair, ``long``
    with 5 (keys as the builder writes them: the group is the key without its last component)."""
    st = synthetic_samples(5, "imagenet", seed=8, w=64, h=48)
    for s, key in zip(st, ["one/obj00"] + [f"four/obj{i:02d}" for i in range(4)], strict=True):
        s.key = f"imagenet/syn/{key}"
    pr = synthetic_samples(6, "alov", seed=9, w=64, h=48)
    for s, key in zip(pr, ["short/p0"] + [f"long/p{i}" for i in range(5)], strict=True):
        s.key = f"alov/{key}"
    write_shards(d, "imagenet", st, per_tar=3)
    write_shards(d, "alov", pr, per_tar=4)


def test_authors_sampling_draws_an_image_then_an_object(tmp_path):
    """train.cpp: a uniform image (video), then a uniform object (pair) of it, with replacement; the epoch reader
    instead weights each image by its objects (1/5 vs 4/5)."""
    from pipeline.group_sampler import GroupSampler

    grouped_shards(tmp_path)
    img, vid = find_shards(tmp_path)
    for s, big, n_big in ((img, "imagenet/syn/four", 4), (vid, "alov/long", 5)):
        smp = GroupSampler(s, batch_size=50)
        assert smp.num_groups == 2
        keys = [k for b in range(400) for k in smp.draw(1234, b).keys]  # 20,000 draws
        share = sum(k.startswith(big + "/") for k in keys) / len(keys)
        assert abs(share - 0.5) < 0.02, share  # 0.5 +- 5.7 sigma; the epoch reader gives n_big / (n_big + 1)
        members = [k for k in keys if k.startswith(big + "/")]
        counts = np.unique(members, return_counts=True)[1]
        assert len(counts) == n_big and np.abs(counts / len(members) - 1 / n_big).max() < 0.02
        assert smp.draw(1234, 7).keys == smp.draw(1234, 7).keys != smp.draw(1235, 7).keys  # a pure function
    # The loader feeds exactly those draws (keys from the audit = the sampler's), for every source and rank.
    ld = loader(tmp_path, pairs_per_batch=4, k=1, audit=True, sampling="authors", seed=5)
    (b,) = first_batches(ld, 1)
    want = [smp.draw(ld._stream_seed(i), 0).keys for i, smp in enumerate(ld._samplers)]
    assert [k.split(":", 1)[1] for k in b["keys"][::2]] == [w[p] for p in range(2) for w in want]
    epoch = [
        k.rsplit("/", 1)[0].split(":")[-1] for k in epoch_keys(loader(tmp_path, pairs_per_batch=2, k=0, audit=True))
    ]
    assert epoch.count("alov/long") == 5 * epoch.count("alov/short") == 5  # the reader's weighting: per pair
    r1 = loader(tmp_path, pairs_per_batch=4, k=1, audit=True, sampling="authors", seed=5, shard_id=1, num_shards=2)
    assert r1._stream_seed(0) != ld._stream_seed(0)  # every rank draws its own stream


def test_authors_sampling_names_a_corrupt_sample(tmp_path):
    ss = synthetic_samples(6, "alov", seed=3, w=96, h=72)
    ss[1].curr = ss[1].curr[: len(ss[1].curr) // 3]  # truncated JPEG
    write_shards(tmp_path, "alov", ss, per_tar=2)
    ld = loader(tmp_path, pairs_per_batch=2, num_threads=1, sampling="authors")
    errors, good = [], 0
    while ld.epoch < 3:  # 9 batches of 2 draws (seeded): some hold the bad sample, some do not
        try:
            for _ in ld:
                good += 1
        except SampleDecodeError as e:
            errors.append(str(e))
    assert errors and good  # a bad batch is lost, iteration goes on
    assert "alov_000001" in errors[0] and "alov-train-000000.tar" in errors[0] and "curr.jpg" in errors[0]


def test_corrupt_sample_names_shard_and_key(tmp_path):
    ss = synthetic_samples(8, "alov", seed=3, w=96, h=72)
    ss[5].curr = bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))
    write_shards(tmp_path, "alov", ss, per_tar=4)
    ld = loader(tmp_path, pairs_per_batch=2, shuffle_buffer=0, num_threads=1)
    with pytest.raises(SampleDecodeError) as ei:
        list(ld)
    msg = str(ei.value)
    assert "alov_000005" in msg and "alov-train-000001.tar" in msg and "curr.jpg" in msg
    lost_at = ld.batch
    assert ld.epoch == 0 and 1 <= lost_at <= len(ld) == 4  # the lost batch counts as read
    assert len(list(ld)) == len(ld) - lost_at  # iteration continues after the lost batch, to the epoch's end


def test_a_stray_tar_member_is_named(tmp_path):
    """A member that belongs to no v1 sample (a README added to a tar) reaches the epoch reader as a sample with
    none of the members it reads, which DALI cannot name; the diagnosis finds it in the index."""
    ss = synthetic_samples(3, "alov", seed=3, w=96, h=72)
    gone = dict.fromkeys(["curr.jpg", "prev.jpg", "boxes.npy", "meta.json"])  # None: member left out
    ss.insert(1, Sample("README", b"", np.zeros((1, 4)), extra={**gone, "txt": b"notes"}))
    write_shards(tmp_path, "alov", ss, per_tar=4)
    with pytest.raises(SampleDecodeError) as ei:
        list(loader(tmp_path, pairs_per_batch=4, shuffle_buffer=0, num_threads=1))
    assert "key='README' in shard " in str(ei.value) and "alov-train-000000.tar" in str(ei.value)


@pytest.mark.parametrize("sampling", ["authors", "epoch"])
def test_state_taken_right_after_a_lost_batch_resumes_exactly(tmp_path, sampling):
    """DALI's checkpoint after a failed run does not count the failed batch: restored, it would shift the epoch
    by a batch (epoch reader) or the shifts (authors'). The state then carries no checkpoint and the restored
    loader replays to the position instead, giving the very batches the original goes on with."""
    ss = synthetic_samples(8, "alov", seed=3, w=96, h=72)
    ss[5].curr = ss[5].curr[: len(ss[5].curr) // 3]  # truncated JPEG
    write_shards(tmp_path, "alov", ss, per_tar=4)
    kw = {"pairs_per_batch": 2, "k": 2, "num_threads": 1, "shuffle_buffer": 0, "sampling": sampling}
    ld = loader(tmp_path, **kw)
    it = iter(ld)
    while True:
        try:
            next(it)
        except SampleDecodeError:
            break
        except StopIteration:
            if ld.epoch > 4:
                pytest.fail("no batch drew the corrupt sample")
            it = iter(ld)
    state = ld.state_dict()
    assert state["dali_checkpoint"] is None and state["batch"] > 0
    rest = []
    while len(rest) < 3:  # the original goes on (across the epoch end)
        try:
            rest += [b["bbox"].clone() for b in ld]
        except SampleDecodeError:
            rest.append(None)
    other = loader(tmp_path, **kw)
    other.load_state_dict(state)
    again = []
    while len(again) < 3:
        try:
            again += [b["bbox"].clone() for b in other]
        except SampleDecodeError:
            again.append(None)
    for x, y in zip(rest[:3], again[:3], strict=True):
        assert (x is None and y is None) or torch.equal(x, y)


def test_every_source_must_have_samples_for_every_rank(tmp_path):
    """A small source used to pass construction and then fail every batch with a raw DALI assertion (fewer
    samples than ranks) or a misleading decode error (no samples); pairs_per_batch=0 divided by zero."""
    write_shards(tmp_path, "imagenet", synthetic_samples(12, "imagenet", seed=1, w=64, h=48), per_tar=6)
    write_shards(tmp_path, "alov", synthetic_samples(2, "alov", seed=2, w=64, h=48), per_tar=2)
    with pytest.raises(ValueError, match="alov train has 2 samples in 1 shard.*fewer than the 3 ranks"):
        loader(tmp_path, pairs_per_batch=2, shard_id=0, num_shards=3)
    assert len(loader(tmp_path, pairs_per_batch=2, shard_id=0, num_shards=3, sampling="authors")) == 4
    assert len(loader(tmp_path, pairs_per_batch=2, shard_id=0, num_shards=2)) == 6  # 12 stills / 2 ranks / 1
    with pytest.raises(ValueError, match="pairs_per_batch must be >= 1"):
        loader(tmp_path, pairs_per_batch=0)
    (tmp_path / "alov-train-000000.tar").write_bytes(b"")  # an empty shard (its index too)
    (tmp_path / "alov-train-000000.idx").write_text("v1.2 0\n")
    for sampling in ("epoch", "authors"):
        with pytest.raises(ValueError, match="alov train has 0 samples"):
            loader(tmp_path, pairs_per_batch=2, sampling=sampling)


def test_truncated_shard_names_shard_and_key_and_iteration_goes_on(tmp_path):
    """A tar cut short (interrupted copy, full disk), its index intact: the authors' sampling reads past its end,
    and a SampleDecodeError names the shard and a lost key; the position moves on past the lost batch as for a
    corrupt JPEG (an OSError used to escape the loader, stuck on that batch). The epoch reader refuses the set
    up front: DALI follows the index past the end of the file, which killed the process (SIGSEGV) when a
    member was cut in the middle."""
    write_shards(tmp_path, "alov", synthetic_samples(6, "alov", seed=3, w=96, h=72), per_tar=3)
    idx = (tmp_path / "alov-train-000001.idx").read_text().splitlines()
    cut = int(idx[1].split()[1]) + 700  # inside the first member of alov_000003: alov_000003..5 lost
    os.truncate(tmp_path / "alov-train-000001.tar", cut)
    with pytest.raises(ValueError, match="alov-train-000001.tar is shorter than its index says"):
        loader(tmp_path, pairs_per_batch=1, k=1, num_threads=1, sampling="epoch")
    ld = loader(tmp_path, pairs_per_batch=1, k=1, num_threads=1, sampling="authors")
    errors, good = [], 0
    while ld.epoch < 2:
        try:
            for _ in ld:
                good += 1
        except SampleDecodeError as e:
            errors.append(((ld.epoch, ld.batch), str(e)))
    assert errors and good > 0
    positions = [p for p, _ in errors]
    assert positions == sorted(set(positions))  # each error lost a different batch
    msg = errors[0][1]
    assert "alov-train-000001.tar" in msg and any(f"alov_00000{i}" in msg for i in (3, 4, 5)), msg
    assert "truncated shard" in msg


def test_a_malformed_index_is_refused_with_its_line(tmp_path):
    """DALI trusts the .idx: offsets that are not tar member offsets, or fields that are not numbers, are a
    ValueError naming the file and line before any reader sees them (they crashed it or raised IndexError)."""
    write_shards(tmp_path, "alov", synthetic_samples(4, "alov", seed=3, w=96, h=72), per_tar=4)
    idx = tmp_path / "alov-train-000000.idx"
    good = idx.read_text().splitlines()
    too_long = good[1].replace(" 512 ", f" {'5' * 5000} ", 1)  # int() refuses over 4,300 digits: a bare ValueError
    for bad in ("boxes.npy 512", good[1].replace(" 512 ", " 513 ", 1), good[1].replace(" 512 ", " 0x10 ", 1), too_long):
        idx.write_text("\n".join([good[0], bad, *good[2:]]) + "\n")
        with pytest.raises(ValueError, match=r"alov-train-000000.idx:2: not 'ext offset size name'"):
            loader(tmp_path, pairs_per_batch=1, k=1)


# ----------------------------------------------------------------------------------------------------------------
# CLIs
# ----------------------------------------------------------------------------------------------------------------


def test_dump_and_show_batch_clis(synth, tmp_path):
    from pipeline import augment, show_batch

    out = tmp_path / "d.npz"
    assert augment.main(["--shards", str(synth), "--batches", "2", "--pairs-per-batch", "2", "--dump", str(out)]) == 0
    z = np.load(out)
    assert z["target"].shape == (44, 3, 227, 227) and z["target"].dtype == np.uint8
    assert z["search_windows"].shape == z["target_windows"].shape == (44, 4) and z["keys"].shape == (44,)
    key = str(z["keys"][0])
    img = decode(member(key, "curr.jpg"))
    ref = geometry_crops(img, z["search_windows"][:11])
    assert np.abs(z["search"][:11].astype(int) - ref).max() <= 1  # recomputable from the shard alone
    long = ["--shards", str(synth), "--batches", "9", "--pairs-per-batch", "8", "--k", "0", "--sampling", "epoch"]
    assert augment.main([*long, "--dump", str(out)]) == 0  # 30 stills / 4 a batch: 7 batches an epoch, then more
    z = np.load(out)
    assert z["bbox"].shape == (72, 4) and sorted(set(z["epoch"].tolist())) == [0, 1]
    png = tmp_path / "grid.png"
    assert show_batch.main(["--shards", str(synth), "--out", str(png), "--pairs", "2"]) == 0
    assert Image.open(png).size[0] >= 227 * 12


def test_npz_stream_writes_the_appended_rows_holding_one_batch(tmp_path, monkeypatch):
    """The dump is written batch by batch: np.load reads back the concatenated arrays, memory holds
    about one batch (numpy reports its buffers to tracemalloc), and a failure leaves neither file nor spool."""
    import tracemalloc

    from shards import output_files
    from shards.output_files import NpzStream

    monkeypatch.setattr(output_files, "COPY_CHUNK", 1 << 16)  # the copy buffer, else larger than this small test
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (4, 3, 128, 128), dtype=np.uint8) for _ in range(40)]  # 192 KiB each
    keys = [[f"k{i}-{j}" * (1 + i % 3) for j in range(4)] for i in range(40)]  # widths differ between batches
    out = tmp_path / "s.npz"
    tracemalloc.start()
    with NpzStream(out) as w:
        for b, k in zip(batches, keys, strict=True):
            w.append("crops", b.copy())  # fresh memory each batch, as the loader's are
            w.append("boxes", b[:, 0, 0, :4].astype(np.float32))
            w.append("keys", k)
        w.put("meta_json", np.array('{"a": 1}'))
    grown = tracemalloc.get_traced_memory()[1]  # the peak, writing the zip included
    tracemalloc.stop()
    assert grown < 5 * batches[0].nbytes  # all 40 batches held would be 8x that
    z = np.load(out, allow_pickle=False)
    assert np.array_equal(z["crops"], np.concatenate(batches)) and z["crops"].dtype == np.uint8
    assert np.array_equal(z["boxes"], np.concatenate(batches)[:, 0, 0, :4].astype(np.float32))
    assert z["keys"].tolist() == [k for ks in keys for k in ks] and str(z["meta_json"]) == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]

    mismatch = r"crops: rows of uint8 \(3, 8, 8\) after rows of uint8 \(3, 128, 128\)"
    with pytest.raises(ValueError, match=mismatch), NpzStream(tmp_path / "t.npz") as w:
        w.append("crops", batches[0])
        w.append("crops", batches[0][:, :, :8, :8])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_data_clis_report_a_corrupt_first_batch_in_one_line(tmp_path, capsys):
    from pipeline import augment, show_batch

    ss = synthetic_samples(2, "alov", seed=3, w=96, h=72)
    ss[0].curr = ss[0].curr[:200]
    ss[1].curr = ss[1].curr[:200]
    write_shards(tmp_path, "alov", ss, per_tar=2)
    argv = ["--shards", str(tmp_path), "--sampling", "epoch"]
    assert augment.main([*argv, "--pairs-per-batch", "1", "--dump", str(tmp_path / "d.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "alov-train-000000.tar" in err and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if "npz" in p.name]  # neither a partial dump nor its spool
    assert show_batch.main([*argv, "--pairs", "1", "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "alov-train-000000.tar" in err and not (tmp_path / "g.png").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with DALI's GPU backend")
@pytest.mark.parametrize("sampling", ["epoch", "authors"])
def test_gpu_graph_matches_cpu_graph(synth, sampling):
    """Same seed: identical windows and targets on both devices; crops differ only by decoder/warp rounding."""
    c = first_batches(loader(synth, seed=2, audit=True, sampling=sampling), 2)
    g = first_batches(loader(synth, seed=2, audit=True, device="gpu", sampling=sampling), 2)
    for x, y in zip(c, g, strict=True):
        assert y["search"].is_cuda and x["keys"] == y["keys"]
        assert torch.equal(x["search_windows"], y["search_windows"]) and torch.equal(x["bbox"], y["bbox"].cpu())
        d = (x["search"].int() - y["search"].cpu().int()).abs().float()
        assert d.mean() < 1.0 and torch.quantile(d.flatten()[::97], 0.999) <= 8, (d.mean(), d.max())


def test_channels_last_and_unexpanded_target_are_the_same_data(synth):
    """channels_last=True is a free NHWC view with the same values; expand_target=False keeps one target per pair."""
    (a,) = first_batches(loader(synth, seed=9), 1)
    (b,) = first_batches(loader(synth, seed=9, channels_last=True, expand_target=False), 1)
    assert b["search"].shape == a["search"].shape and b["search"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a["search"], b["search"]) and torch.equal(a["bbox"], b["bbox"])
    assert b["target"].shape == (4, 3, 227, 227) and torch.equal(a["target"][::11], b["target"])


@pytest.mark.parametrize("sampling", ["authors", "epoch"])
def test_boxes_that_are_no_boxes_are_refused_and_named(tmp_path, sampling):
    """NaN or inverted boxes decode and crop without an error, so DALI would train on them (the loss turns NaN
    much later, without a name). The authors' sampler checks them before DALI; DALI's own reader (epoch) hands
    each batch's input boxes to the host, where they are checked. Either way the loader names the sample, drops
    the batch, and iterating again goes on."""
    samples = synthetic_samples(8, "alov", seed=8, w=96, h=72)
    samples[2].boxes = np.array([[40, 30, 10, 60], [5, 5, 20, 20]], np.float32)  # x2 < x1
    samples[1].boxes = np.array([[5, 5, 20, 20], [np.nan, 5, 20, 20]], np.float32)
    write_shards(tmp_path, "alov", samples, per_tar=8)
    ld = loader(tmp_path, pairs_per_batch=4, k=1, num_threads=1, sampling=sampling, shuffle_buffer=1)
    named, good = set(), 0
    for _ in range(30 if sampling == "authors" else 2):  # authors: 4 draws with replacement a batch
        try:
            good += len(next(iter(ld))["bbox"]) > 0
        except StopIteration:  # an epoch is 2 batches
            continue
        except SampleDecodeError as e:
            named |= {k for k in ("alov_000001", "alov_000002") if f"key='{k}'" in str(e)}
            assert re.search(r"boxes\.npy holds \[\[(40\.0, 30\.0, 10\.0|5\.0, 5\.0, 20\.0, 20\.0\], \[nan)", str(e))
            assert "iterating again continues with the next one" in str(e)
    assert named == {"alov_000001", "alov_000002"} and good > 0
