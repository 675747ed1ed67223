"""The geometry module against the authors' worked examples, its own inverse, cv2 and the motion model's laws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import geometry as G

W, H = 640, 480


def test_worked_example_interior() -> None:
    box = np.array([100, 50, 140, 90.0])
    g = G.crop_geometry(box, W, H)
    np.testing.assert_array_equal(g.loc, [80, 30, 160, 110])
    assert (int(g.canvas_w), int(g.canvas_h)) == (80, 80)
    assert (float(g.edge_x), float(g.edge_y)) == (0.0, 0.0)
    np.testing.assert_array_equal(G.recenter_scale(box, g), [2.5, 2.5, 7.5, 7.5])


def test_worked_example_top_left_border() -> None:
    box = np.array([10, 10, 50, 30.0])
    g = G.crop_geometry(box, W, H)
    np.testing.assert_array_equal(g.loc, [0, 0, 70, 40])
    np.testing.assert_array_equal(g.roi, [0, 0, 70, 40])
    assert (int(g.canvas_w), int(g.canvas_h)) == (80, 40)
    assert (float(g.edge_x), float(g.edge_y)) == (10.0, 0.0)
    # Recentred (20,10,60,30) in an 80x40 canvas -> (2.5,2.5,7.5,7.5); the canvas starts 10 px left of the image.
    np.testing.assert_array_equal(G.recenter_scale(box, g), [2.5, 2.5, 7.5, 7.5])
    np.testing.assert_array_equal(g.window, [-10, 0, 70, 40])


def _boxes_for_round_trip() -> np.ndarray:
    return np.array(
        [
            [100.3, 50.7, 140.9, 90.1],  # interior, fractional
            [0, 0, 40, 30],  # touching top-left
            [600, 450, 640, 480],  # touching bottom-right
            [0, 200, 35, 260],  # left border
            [300, 0, 330, 25],  # top border
            [610.5, 100, 640, 150],  # right border
            [10, 455.25, 60, 480],  # bottom border
            [320, 240, 321, 241],  # 1-pixel box
            [0, 0, 1, 1],  # 1-pixel box in the corner
            [0, 0, 640, 480],  # the whole image
        ]
    )


def test_round_trip_inside_image_is_exact() -> None:
    boxes = _boxes_for_round_trip()
    g = G.crop_geometry(boxes, W, H)
    back = G.unscale_uncenter(G.recenter_scale(boxes, g), g, W, H)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9)


def test_round_trip_box_larger_than_image_comes_back_clipped() -> None:
    boxes = np.array([[-50, -40, 700, 520], [-10.5, 20, 300, 500.5], [600, -30, 700, 100]])
    g = G.crop_geometry(boxes, W, H)
    back = G.unscale_uncenter(G.recenter_scale(boxes, g), g, W, H)
    expected = np.stack(
        [
            np.maximum(boxes[:, 0], 0),
            np.maximum(boxes[:, 1], 0),
            np.minimum(boxes[:, 2], W),
            np.minimum(boxes[:, 3], H),
        ],
        axis=-1,
    )
    np.testing.assert_allclose(back, expected, atol=1e-9)


def test_vectorised_equals_one_by_one() -> None:
    boxes = _boxes_for_round_trip()
    batch = G.crop_geometry(boxes, W, H)
    for i, b in enumerate(boxes):
        one = G.crop_geometry(b, W, H)
        np.testing.assert_array_equal(one.window, batch.window[i])
        np.testing.assert_array_equal(one.loc, batch.loc[i])


def test_xywh_conversions_round_trip() -> None:
    xywh = np.array([[1, 1, 10, 20], [5.5, 7.25, 3, 4]])
    for one_based in (False, True):
        c = G.xywh_to_corners(xywh, one_based=one_based)
        np.testing.assert_allclose(G.corners_to_xywh(c, one_based=one_based), xywh)
    # OTB's first pixel (1,1) is the 0-based pixel (0,0)
    np.testing.assert_array_equal(G.xywh_to_corners([1, 1, 10, 20], one_based=True), [0, 0, 10, 20])


def test_alov_points_use_min_max_minus_one() -> None:
    # the first line of the real 01-Light_video00001.ann, corner order (xmax,ymin),(xmin,ymin),(xmin,ymax),(xmax,ymax)
    pts = np.array([1080.2, 187.84, 1012.9, 187.84, 1012.9, 269.56, 1080.2, 269.56])
    np.testing.assert_allclose(G.alov_points_to_corners(pts), [1011.9, 186.84, 1079.2, 268.56])


def test_crop_pad_image_places_roi_with_edge_spacing() -> None:
    img = np.arange(H * W, dtype=np.int64).reshape(H, W)
    canvas, g = G.crop_pad_image(img, np.array([10, 10, 50, 30.0]))
    assert canvas.shape == (40, 80)
    assert (canvas[:, :10] == 0).all()
    np.testing.assert_array_equal(canvas[:, 10:80], img[0:40, 0:70])


def test_window_is_the_authors_canvas_but_for_one_far_column_or_row() -> None:
    """The one place the window is not the C++ canvas pixel for pixel, as the module documents: with the 2x window
    clipped at the left (top), ``floor(edge) + ROI`` can fall one pixel short of the canvas, so ``CropPadImage``
    leaves its last column (row) black where the image goes on, and the window reads the image there."""
    rng = np.random.default_rng(0)
    h, w = 120, 160
    img = rng.integers(1, 256, (h, w), dtype=np.uint8)  # no zeros: black canvas pixels are padding
    padded = np.zeros((3 * h, 3 * w), np.uint8)
    padded[h : 2 * h, w : 2 * w] = img
    short_seen = 0
    for _ in range(2000):
        bw, bh = rng.uniform(1, 120, 2)
        x1, y1 = rng.uniform(-bw / 2, w - bw / 2), rng.uniform(-bh / 2, h - bh / 2)
        canvas, g = G.crop_pad_image(img, np.array([x1, y1, x1 + bw, y1 + bh]))
        x0, y0, x1w, y1w = (int(v) for v in g.window)
        read = padded[y0 + h : y1w + h, x0 + w : x1w + w]
        left, top, rw, rh = (int(v) for v in g.roi)
        short_x = left + rw < w and int(np.floor(g.edge_x)) + rw < g.canvas_w
        short_y = top + rh < h and int(np.floor(g.edge_y)) + rh < g.canvas_h
        allowed = np.zeros(canvas.shape, bool)
        allowed[:, -1] |= short_x
        allowed[-1, :] |= short_y
        diff = canvas != read
        assert not (diff & ~allowed).any() and (canvas[diff] == 0).all()
        assert diff[:-1, -1].any() == short_x and diff[-1, :-1].any() == short_y  # exactly there, only then
        assert not (short_x or short_y) or g.edge_x > 0 or g.edge_y > 0
        short_seen += short_x or short_y
    assert short_seen > 100


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None]
    noise = rng.integers(-40, 40, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_crop_and_resize_equals_cv2_resize_of_authors_canvas_when_downscaling() -> None:
    cv2 = pytest.importorskip("cv2")
    img = _textured(H, W)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    # boxes whose 2x canvas exceeds 227 px (cv::resize never reads past the canvas then), inside and at borders
    boxes = np.array([[200, 150, 330, 290.0], [5, 7, 130, 140], [520.5, 330.2, 639, 479], [100, 100, 420, 380]])
    for b in boxes:
        canvas, g = G.crop_pad_image(img, b)
        assert min(int(g.canvas_w), int(g.canvas_h)) > G.INPUT_SIZE
        ref = cv2.resize(canvas, (G.INPUT_SIZE, G.INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        ours = G.to_uint8(G.crop_and_resize(chw, g.window[None]))[0].permute(1, 2, 0).numpy()
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.max() <= 1, f"box {b}: max diff {diff.max()}"


def test_crop_and_resize_upscaled_interior_matches_cv2_away_from_canvas_edge() -> None:
    """Upscaled canvases differ from cv::resize only in the outer half source pixel (documented in the module)."""
    cv2 = pytest.importorskip("cv2")
    img = _textured(H, W, seed=1)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    b = np.array([300, 200, 340, 230.0])  # 80x60 canvas -> 227
    canvas, g = G.crop_pad_image(img, b)
    ref = cv2.resize(canvas, (G.INPUT_SIZE, G.INPUT_SIZE), interpolation=cv2.INTER_LINEAR).astype(int)
    ours = G.to_uint8(G.crop_and_resize(chw, g.window[None]))[0].permute(1, 2, 0).numpy().astype(int)
    m = 3  # output pixels within half a source pixel of the canvas edge (227/60/2 < 3)
    assert np.abs(ours - ref)[m:-m, m:-m].max() <= 1


def test_crop_and_resize_zero_outside_image_and_channels_kept() -> None:
    img = np.full((H, W, 3), 200, dtype=np.uint8)
    img[..., 1] = 100
    chw = torch.from_numpy(img).permute(2, 0, 1)
    crops = G.crop_and_resize(chw, np.array([[-W, -H, 0, 0], [0, 0, W, H]], dtype=np.float64))
    assert crops.shape == (2, 3, 227, 227)
    assert crops[0].abs().max() == 0  # entirely outside: black
    np.testing.assert_allclose(crops[1, :, 1:-1, 1:-1].mean(dim=(1, 2)).numpy(), [200, 100, 200], atol=1e-3)


def test_crop_and_resize_batched_over_images_is_bit_identical() -> None:
    imgs = torch.from_numpy(np.stack([_textured(60, 80, seed=s) for s in range(3)])).permute(0, 3, 1, 2)
    windows = np.array([[-10, -5, 50, 40], [3.0, 4.0, 70.5, 58.25], [20, 10, 60, 30]])
    batched = G.crop_and_resize(imgs, windows)
    for i in range(3):
        torch.testing.assert_close(batched[i], G.crop_and_resize(imgs[i], windows[i])[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="3 images need 3 windows"):
        G.crop_and_resize(imgs, windows[:2])


# ------------------------------------------------------------------------------------------------- motion model


def test_laplace_sampler_has_scale_one_over_lambda() -> None:
    rng = np.random.default_rng(123)
    d = G.sample_laplace(rng, 5.0, (400_000,))
    assert abs(np.abs(d).mean() - 0.2) < 0.002  # E|Laplace(b)| = b; std error ~3e-4
    assert abs(np.mean(d > 0) - 0.5) < 0.005


def test_shift_boxes_obey_the_authors_loop() -> None:
    rng = np.random.default_rng(7)
    box = np.array([200.0, 150.0, 260.0, 230.0])
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    m = G.shift_boxes(box, W, H, rng, n=100_000)
    ncx = (m.boxes[:, 0] + m.boxes[:, 2]) / 2
    ncy = (m.boxes[:, 1] + m.boxes[:, 3]) / 2
    nw = m.boxes[:, 2] - m.boxes[:, 0]
    nh = m.boxes[:, 3] - m.boxes[:, 1]
    # scale factors within [0.6, 1.4] (Laplace clamped to +-0.4), and the box follows from them
    assert nw.min() >= 0.6 * w - 1e-9 and nw.max() <= 1.4 * w + 1e-9
    assert nh.min() >= 0.6 * h - 1e-9 and nh.max() <= 1.4 * h + 1e-9
    np.testing.assert_allclose(nw, w * (1 + m.scale_x))
    # every kept window satisfies the rejection conditions, or is the 10th try
    acc_x = (np.abs(ncx - cx) <= w + 1e-9) & (m.boxes[:, 0] >= -1e-9) & (m.boxes[:, 2] <= W + 1e-9)
    acc_y = (np.abs(ncy - cy) <= h + 1e-9) & (m.boxes[:, 1] >= -1e-9) & (m.boxes[:, 3] <= H + 1e-9)
    assert np.all(acc_x | (m.tries_x == G.MAX_NUM_TRIES))
    assert np.all(acc_y | (m.tries_y == G.MAX_NUM_TRIES))
    assert m.tries_x.max() > 1  # rejections do happen (P(|d|>1) = e^-5 per try)
    # kept draws: Laplace(b=0.2) truncated to |d| <= 1 by the loop: E|d| = (b - (1+b)e^{-1/b}) / (1 - e^{-1/b})
    expected = (0.2 - 1.2 * np.exp(-5)) / (1 - np.exp(-5))
    assert abs(np.abs(m.shift_x).mean() - expected) < 0.003
    assert abs(np.abs(m.shift_y).mean() - expected) < 0.003
    assert abs(np.abs(m.scale_x).mean() - (1 / 15) * (1 - np.exp(-0.4 * 15))) < 0.002


def test_shift_keeps_windows_inside_image_near_borders() -> None:
    rng = np.random.default_rng(3)
    m = G.shift_boxes(np.array([0.0, 0.0, 50.0, 40.0]), W, H, rng, n=5000)
    assert m.boxes[:, :2].min() >= -1e-9
    assert m.boxes[:, 2].max() <= W + 1e-9 and m.boxes[:, 3].max() <= H + 1e-9


def test_shift_is_deterministic_for_a_seed() -> None:
    a = G.shift_boxes([10, 20, 60, 90], W, H, np.random.default_rng(5), n=50).boxes
    b = G.shift_boxes([10, 20, 60, 90], W, H, np.random.default_rng(5), n=50).boxes
    c = G.shift_boxes([10, 20, 60, 90], W, H, np.random.default_rng(6), n=50).boxes
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_example_windows_true_example_is_static_target() -> None:
    box = np.array([100, 50, 140, 90.0])
    ex = G.example_windows(box, box, W, H, np.random.default_rng(0), k=10)
    assert ex.search_windows.shape == (11, 4) and ex.targets.shape == (11, 4)
    np.testing.assert_array_equal(ex.targets[0], [2.5, 2.5, 7.5, 7.5])
    np.testing.assert_array_equal(ex.target_window, ex.search_windows[0])
    # shifted examples move the target off-centre but keep it in the nominal [0, 10] range
    assert np.abs(ex.targets[1:] - ex.targets[0]).max() > 0.1
    assert ex.targets[1:].min() > -1 and ex.targets[1:].max() < 11
