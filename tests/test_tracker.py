"""GoturnTracker / track_step / MultiTracker: input types, lost-target guards, batching, the device-side
geometry.

Nets with a constant output (all weights zero, fc8's bias chosen) drive boxes deterministically out of the
frame, to zero size or to NaN; one Caffe-filler net checks that batching and input types do not change
results.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from model import geometry as G
from model.net import GoturnNet
from model.tracker import (
    GoturnTracker,
    MultiTracker,
    _fix_degenerate,
    _fix_degenerate_torch,
    device_step,
    frame_to_tensor,
    track_step,
)


def constant_net(output: list[float], variant: str = "authors") -> GoturnNet:
    """A net whose output is ``output`` whatever the input (every weight zero, fc8's bias = output)."""
    net = GoturnNet(variant, init="none")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.fc8.bias.copy_(torch.tensor(output) / net.output_scale)
    return net.eval()


@pytest.fixture(scope="module")
def random_net() -> GoturnNet:
    torch.manual_seed(0)
    net = GoturnNet("authors").eval()
    with torch.no_grad():  # He-scaled head so the output depends visibly on the crops
        for name in net.fc_names:
            fc = getattr(net, name)
            fc.weight.normal_(0, (2.0 / fc.in_features) ** 0.5)
        for conv in list(net.target.children()) + list(net.search.children()):
            fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
            conv.weight.normal_(0, (2.0 / fan_in) ** 0.5)
    return net


def frames(n: int = 4, h: int = 120, w: int = 160, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 2 * i, axis=1) for i in range(n)]


def test_static_output_keeps_box_and_input_types_agree(random_net) -> None:
    still = constant_net([2.5, 2.5, 7.5, 7.5])  # the authors' "no motion" output
    t = GoturnTracker(still)
    t.init(frames()[0], (40.0, 30.0, 20.0, 16.0))
    np.testing.assert_allclose(t.update(frames()[1]), [40, 30, 20, 16], atol=1e-9)

    f = frames(3)
    results = []
    for conv in (
        lambda a: a,
        lambda a: Image.fromarray(a),
        lambda a: torch.from_numpy(a).permute(2, 0, 1).contiguous(),
        lambda a: torch.from_numpy(a).permute(2, 0, 1).float(),
        lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], axis=2),  # RGBA
    ):
        t = GoturnTracker(random_net)
        t.init(conv(f[0]), (40.5, 30.25, 20.0, 16.0))
        results.append(np.stack([t.update(conv(x)) for x in f[1:]]))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    gray = [x[:, :, 0] for x in f]
    t = GoturnTracker(random_net)
    t.init(gray[0], (40.5, 30.25, 20.0, 16.0))
    rgb_from_gray = [np.repeat(x[:, :, None], 3, axis=2) for x in gray]
    t2 = GoturnTracker(random_net)
    t2.init(rgb_from_gray[0], (40.5, 30.25, 20.0, 16.0))
    for a, b in zip(gray[1:], rgb_from_gray[1:], strict=True):
        np.testing.assert_array_equal(t.update(a), t2.update(b))
        np.testing.assert_array_equal(t.update(Image.fromarray(a)), t2.update(Image.fromarray(b)))


@pytest.mark.parametrize("variant", ["authors", "opencv"])
def test_never_crashes_when_lost(variant) -> None:
    H, W = 90, 120
    f = frames(1, H, W)[0]
    if variant == "authors":
        # away: 0.6 box widths to the right per frame; collapse: zero size
        away, collapse = [8.0, 2.5, 13.0, 7.5], [5.0, 5.0, 5.0, 5.0]
    else:
        away, collapse = [150.0, 56.75, 263.5, 170.25], [113.5, 113.5, 113.5, 113.5]
    for out in (away, collapse, [float("nan")] * 4, [1e30, -1e30, 1e30, 1e30]):
        t = GoturnTracker(constant_net(out, variant))
        t.init(f, (50.0, 40.0, 20.0, 10.0))
        for _ in range(8):
            b = t.update(f)
            assert np.isfinite(b).all() and b[2] >= 1 and b[3] >= 1, (out, b)
            assert b[0] >= -1e-9 and b[0] + b[2] <= W + 1e-9 and b[1] >= -1e-9 and b[1] + b[3] <= H + 1e-9, b
    lost = GoturnTracker(constant_net([float("nan")] * 4, variant))
    lost.init(f, (50.0, 40.0, 20.0, 10.0))
    np.testing.assert_array_equal(lost.update(f), [50, 40, 20, 10])  # non-finite output keeps the box
    with pytest.raises(ValueError, match="w, h > 0"):
        lost.init(f, (1.0, 2.0, 0.0, 3.0))
    with pytest.raises(RuntimeError, match=r"call init\(\) before update\(\)"):
        GoturnTracker(constant_net(away, variant)).update(f)


def test_opencv_init_is_rounded_and_clipped() -> None:
    t = GoturnTracker(constant_net([56.75, 56.75, 170.25, 170.25], "opencv"))
    f = frames(1)[0]
    t.init(f, (-20.2, -10.0, 81.0, 61.0))
    assert t.box.tolist() == [0, 0, 61, 51]  # spec 5.4: (-20, -10, 81, 61) & image = (0, 0, 61, 51)
    assert t.update(f).tolist() == [0, 0, 61, 51]
    with pytest.raises(ValueError, match="overlap"):
        t.init(f, (500.0, 10.0, 5.0, 5.0))


def test_batched_step_and_multitracker_match_single(random_net) -> None:
    seqs = {"a": frames(4, 120, 160, 1), "b": frames(4, 90, 200, 2), "c": frames(3, 64, 64, 3)}
    inits = {"a": (40.0, 30.0, 20.0, 16.0), "b": (150.0, 50.0, 30.0, 30.0), "c": (2.0, 3.0, 10.0, 8.0)}
    single = {}
    for k, fs in seqs.items():
        t = GoturnTracker(random_net)
        single[k] = t.track_sequence(fs, inits[k])
    mt = MultiTracker(random_net, max_batch=2)
    for k, fs in seqs.items():
        mt.start(k, fs[0], inits[k])
    for i in range(1, 4):
        step = mt.step({k: fs[i] for k, fs in seqs.items() if i < len(fs)})
        for k, box in step.items():
            np.testing.assert_allclose(box, single[k][i], rtol=0, atol=1e-3)
    assert len(mt) == 3 and "c" not in step
    mt.stop("c")
    assert mt.keys() == ["a", "b"]
    with pytest.raises(KeyError):
        mt.step({"zzz": seqs["a"][0]})
    assert track_step(random_net, [], np.zeros((0, 4)), []).shape == (0, 4)


def test_device_geometry_mirror_equals_numpy() -> None:
    """The device-side geometry, decode and guard equal the numpy reference bit for bit."""
    rng = np.random.default_rng(0)
    W, H = 241.0, 193.0
    x1 = rng.uniform(-80, 300, 4000)
    y1 = rng.uniform(-80, 250, 4000)
    boxes = np.stack([x1, y1, x1 + rng.uniform(-5, 200, 4000), y1 + rng.uniform(-5, 150, 4000)], axis=1)
    boxes[:50] = np.round(boxes[:50])
    g = G.crop_geometry(boxes, W, H)
    win, offset, canvas, size = G.crop_step_geometry_torch(torch.from_numpy(boxes), W, H)
    np.testing.assert_array_equal(win.numpy(), g.window)
    np.testing.assert_array_equal(canvas.numpy(), np.stack([g.canvas_w, g.canvas_h], axis=1))
    assert size.tolist() == [W, H]
    pred = rng.uniform(-5, 15, (4000, 4)).astype(np.float32)
    ref = G.unscale_uncenter(pred.astype(np.float64), g, W, H)
    ours = G.unscale_uncenter_torch(torch.from_numpy(pred), offset, canvas, size)
    np.testing.assert_array_equal(ours.numpy(), ref)
    ref[::7] = np.nan
    fixed = _fix_degenerate(ref, boxes, np.tile([W, H], (len(ref), 1)), 1.0)
    fixed_torch = _fix_degenerate_torch(torch.from_numpy(ref), torch.from_numpy(boxes), size, 1.0)
    np.testing.assert_array_equal(fixed_torch.numpy(), fixed)


@pytest.mark.parametrize("channels_last", [False, True])
def test_captured_step_run_eagerly_equals_track_step(random_net, channels_last) -> None:
    """What the CUDA graph captures (`device_step`: geometry, crops, decode and guard all in torch) equals the eager
    `track_step` bit for bit; checked here on the CPU, so only the capture itself is left to the CUDA test."""
    net = copy.deepcopy(random_net).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    fs = frames(8, 193, 241, 3)
    box = np.array([[100.0, 60.0, 131.5, 101.25]])
    dev_box = torch.from_numpy(box.copy())
    prev = frame_to_tensor(fs[0])
    moved = 0.0
    for f in fs[1:]:
        curr = frame_to_tensor(f)
        ref = track_step(net, [prev], box, [curr])
        with torch.inference_mode():  # as captured
            dev_box = device_step(net, prev, curr, dev_box, 1.0)
        np.testing.assert_array_equal(dev_box.numpy(), ref)
        moved += np.abs(ref - box).sum()
        box, prev = ref, curr
    assert moved > 1.0  # the boxes really moved, so the decode was exercised


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_path_equals_eager(random_net) -> None:
    random_net = copy.deepcopy(random_net)  # the module's net stays on the CPU whatever happens here
    fs = frames(12, 193, 241, 5)
    eager = GoturnTracker(random_net, "cuda").track_sequence(fs, (100.0, 60.0, 30.0, 40.0))
    graph = GoturnTracker(random_net, "cuda", cuda_graph=True)
    seq = graph.track_sequence(fs, (100.0, 60.0, 30.0, 40.0))
    np.testing.assert_array_equal(seq, eager)
    graph.init(fs[0], (100.0, 60.0, 30.0, 40.0))
    steps = np.stack([graph.update(f if i % 2 else Image.fromarray(f)) for i, f in enumerate(fs[1:])])
    np.testing.assert_array_equal(steps, eager[1:])
    small = frames(3, 120, 160, 6)  # another frame size: eager fallback, then a new graph
    mixed = fs[:4] + small
    eager_mixed = GoturnTracker(random_net, "cuda").track_sequence(mixed, (100.0, 60.0, 30.0, 40.0))
    np.testing.assert_array_equal(graph.track_sequence(mixed, (100.0, 60.0, 30.0, 40.0)), eager_mixed)


def test_track_step_crops_grouped_by_frame_size_equal_per_sequence_crops() -> None:
    """track_step crops every sequence of one frame size in one call; crops must not depend on the grouping."""
    from model.tracker import _authors_crops

    rng = np.random.default_rng(1)
    shapes = [(48, 64), (48, 64), (40, 56), (48, 64), (40, 56)]

    def frame(h: int, w: int) -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1)

    prev = [frame(h, w) for h, w in shapes]
    curr = [frame(h, w) for h, w in shapes]
    curr[4] = frame(44, 56)  # the frame size changes inside this sequence
    boxes = np.array([[5.5, 6.25, 30, 20], [0, 0, 10, 8], [40.2, 30.7, 55.9, 39.9], [-3, 20, 12, 60], [8, 8, 20, 30]])
    sizes = np.array([[c.shape[2], c.shape[1]] for c in curr], dtype=np.float64)
    windows = G.crop_geometry(boxes, sizes[:, 0], sizes[:, 1]).window
    psizes = np.array([[c.shape[2], c.shape[1]] for c in prev], dtype=np.float64)
    twins = G.crop_geometry(boxes, psizes[:, 0], psizes[:, 1]).window
    for idx in ([0, 1, 2, 3, 4], [0, 1, 3]):  # mixed sizes, and the one-size fast path
        target, search = _authors_crops([prev[i] for i in idx], [curr[i] for i in idx], twins[idx], windows[idx])
        for k, i in enumerate(idx):
            torch.testing.assert_close(target[k], G.crop_and_resize(prev[i], twins[i])[0], rtol=0, atol=0)
            torch.testing.assert_close(search[k], G.crop_and_resize(curr[i], windows[i])[0], rtol=0, atol=0)


def test_target_is_cropped_with_the_previous_frames_size(random_net: GoturnNet) -> None:
    """CropPadImage(bbox_prev, image_prev): when the frame size changes, the target window comes from the
    previous frame's size and the search window (and the decode) from the current one's."""
    from model.tracker import _net_input, track_step

    rng = np.random.default_rng(2)
    prev = torch.from_numpy(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).permute(2, 0, 1)
    curr = torch.from_numpy(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).permute(2, 0, 1)
    box = np.array([[150.0, 150.0, 170.0, 170.0]])
    seen = []
    hook = random_net.target.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        track_step(random_net, [prev], box, [curr])
    finally:
        hook.remove()
    want = G.to_uint8(G.crop_and_resize(prev, G.crop_geometry(box, 200.0, 200.0).window))
    assert not torch.equal(want, G.to_uint8(G.crop_and_resize(prev, G.crop_geometry(box, 100.0, 100.0).window)))
    torch.testing.assert_close(seen[0], _net_input(random_net, want, random_net.normalization), rtol=0, atol=0)


def test_infinite_output_keeps_previous_box_in_both_step_paths() -> None:
    """The decode clamps +-inf to the image border: finiteness must be tested on the raw output, eager and
    captured (`device_step`) alike."""
    f = frame_to_tensor(frames(1, 100, 100)[0])
    box = np.array([[40.0, 40.0, 60.0, 60.0]])
    inf = float("inf")
    for out in ([2.5, 2.5, inf, inf], [-inf, 2.5, 7.5, 7.5], [2.5, -inf, 7.5, inf]):
        net = constant_net(out)
        np.testing.assert_array_equal(track_step(net, [f], box, [f]), box)
        with torch.inference_mode():
            np.testing.assert_array_equal(device_step(net, f, f, torch.from_numpy(box), 1.0).numpy(), box)
    for variant in ("authors", "opencv"):
        t = GoturnTracker(constant_net([inf, inf, inf, inf], variant))
        t.init(frames(1)[0], (50.0, 40.0, 20.0, 10.0))
        np.testing.assert_array_equal(t.update(frames(1)[0]), [50, 40, 20, 10])


def test_a_refilled_frame_buffer_tracks_as_fresh_frames(random_net) -> None:
    """A camera ring buffer or ``cap.read(buf)`` refills one array per frame: the trackers keep their own copy of
    the previous frame (it was a view of the caller's buffer, so the target crop came from the new frame)."""
    fs = frames(4)
    fresh = GoturnTracker(random_net).track_sequence(fs, (40.0, 30.0, 20.0, 16.0))
    for wrap in (lambda a: a, lambda a: torch.from_numpy(a).permute(2, 0, 1), lambda a: a[:, :, :1]):
        buf = fs[0].copy()
        t, m = GoturnTracker(random_net), MultiTracker(random_net)
        t.init(wrap(buf), (40.0, 30.0, 20.0, 16.0))
        m.start("k", wrap(buf), (40.0, 30.0, 20.0, 16.0))
        for i in range(1, 4):
            np.copyto(buf, fs[i])
            box, multi = t.update(wrap(buf)), m.step({"k": wrap(buf)})["k"]
            if wrap(buf).shape[-1] != 1:  # the grey view tracks other pixels: only its own two paths agree
                np.testing.assert_array_equal(box, fresh[i])
            np.testing.assert_allclose(multi, box, rtol=0, atol=1e-3)


def test_tracker_arguments_are_checked() -> None:
    net = constant_net([2.5, 2.5, 7.5, 7.5])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="min_size must be a positive"):
            GoturnTracker(net, min_size=bad)
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        MultiTracker(net, max_batch=0)
    with pytest.raises(ValueError, match="no frames"):
        GoturnTracker(net).track_sequence([], (1.0, 1.0, 5.0, 5.0))
    for box in ((0.0, 0.0, 1e19, 5.0), (-3e9, 0.0, 4e9, 5.0)):  # overflowed the crop geometry's int64
        with pytest.raises(ValueError, match="more than any frame"):
            GoturnTracker(net).init(frames(1)[0], box)
    box = torch.tensor([1.0, 1.0, 5.0, 5.0], requires_grad=True)  # e.g. from a detector run with autograd
    t = GoturnTracker(net)
    t.init(frames(1)[0], box * 2)
    assert t.box.tolist() == [2.0, 2.0, 10.0, 10.0]
    with pytest.warns(UserWarning, match="0..255 values"):  # torchvision's 0..1 floats would track as black
        frame_to_tensor(np.random.default_rng(0).random((6, 8, 3)))


def test_frame_dtypes_convert_alike_for_numpy_torch_and_pil() -> None:
    rng = np.random.default_rng(0)
    a16 = rng.integers(0, 65536, (6, 8), dtype=np.uint16)
    a16[0, :4] = [0, 255, 256, 65535]
    want = np.broadcast_to((a16 >> 8).astype(np.uint8), (3, 6, 8))
    pil_i32 = Image.fromarray(a16.astype(np.int32), "I")  # how older Pillow opens 16-bit PNGs
    small = np.array([[0, 7, 200, 255]], np.int32)  # mode I holding 8-bit values: read as they are
    np.testing.assert_array_equal(frame_to_tensor(Image.fromarray(small, "I")).numpy()[0], small)
    for frame in (a16, a16.astype(">u2"), torch.from_numpy(a16), Image.fromarray(a16), pil_i32):
        np.testing.assert_array_equal(frame_to_tensor(frame).numpy(), want)  # 16 bit -> high byte, as cv2
    f32 = rng.uniform(-20, 280, (6, 8)).astype(np.float32)
    f32[0, :6] = [0.4, 0.5, 1.5, 2.5, 254.6, 100.7]
    want = np.broadcast_to(np.clip(np.rint(f32), 0, 255).astype(np.uint8), (3, 6, 8))
    for frame in (f32, f32.astype(np.float64), torch.from_numpy(f32), Image.fromarray(f32, "F")):
        np.testing.assert_array_equal(frame_to_tensor(frame).numpy(), want)  # float: 0..255, round then clip
    for bad in (a16.astype(np.int32), a16 > 1000, torch.from_numpy(a16.astype(np.int64))):
        with pytest.raises(TypeError, match="uint8, uint16"):
            frame_to_tensor(bad)


@pytest.mark.parametrize("variant", ["authors", "opencv"])
def test_init_box_off_frame_or_empty_and_empty_frames_are_value_errors(variant: str) -> None:
    net = constant_net([2.5, 2.5, 7.5, 7.5] if variant == "authors" else [56.75, 56.75, 170.25, 170.25], variant)
    f = frames(1)[0]  # 160 x 120
    t, m = GoturnTracker(net), MultiTracker(net)
    for box in ((500.0, 40.0, 20.0, 20.0), (-100.0, -100.0, 20.0, 20.0), (160.0, 0.0, 5.0, 5.0), (0, -9, 5, 9)):
        for start in (t.init, lambda fr, b: m.start("k", fr, b)):
            with pytest.raises(ValueError, match=r"does not overlap the 160x120 frame"):
                start(f, box)
    for box in ((10.0, 10.0, 0.0, 5.0), (10.0, 10.0, 5.0, -1.0), (1, 2, 3), (1.0, 2.0, float("nan"), 3.0)):
        with pytest.raises(ValueError, match="w, h > 0"):
            t.init(f, box)
    t.init(f, (-50.0, -50.0, 400.0, 300.0))  # larger than the frame: overlaps, accepted
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0), np.uint8), torch.zeros((3, 0, 4))):
        with pytest.raises(ValueError, match="empty frame"):
            t.update(empty)
        with pytest.raises(ValueError, match="empty frame"):
            t.init(empty, (0.0, 0.0, 1.0, 1.0))
