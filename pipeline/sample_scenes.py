"""Procedural scenes for the sample data: textured backgrounds, textured objects, smooth motion, rendered video.

Why: tests and the demo need images whose tracking difficulty looks like the real data's (clutter, look-alike
distractors, occlusion, scale and aspect change, camera pan, lighting change, objects crossing the border,
grayscale) yet are deterministic and cost nothing to download. Everything here is a pure function of the
``numpy.random.Generator`` passed in, drawn in a fixed order, so one seed always paints the same pixels.
`pipeline.make_sample_data` writes these scenes in the real ImageNet DET, ALOV300++ and OTB layouts.

Boxes are 0-based corner boxes (x1, y1, x2, y2) in float pixels; frames are float32 HxWx3 in 0..255 until
`to_image` turns them into PIL images.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------------------------
# Painting: colours, smooth noise, backgrounds
# ------------------------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _lerp_grid(grid: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Smoothstep interpolation of ``grid`` (gh, gw, c) at fractional rows ``gy`` (h,), columns ``gx``."""
    gy = np.clip(gy, 0, grid.shape[0] - 1.001)
    gx = np.clip(gx, 0, grid.shape[1] - 1.001)
    y0 = gy.astype(np.int64)
    x0 = gx.astype(np.int64)
    fy = gy - y0
    fx = gx - x0
    fy = (fy * fy * (3 - 2 * fy)).astype(np.float32)[:, None, None]
    fx = (fx * fx * (3 - 2 * fx)).astype(np.float32)[None, :, None]
    rows = grid[y0] * (1 - fy) + grid[y0 + 1] * fy  # (h, gw, c)
    return rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int = 1) -> np.ndarray:
    """Value noise with feature size ``cell`` px, std ~0.7: the building block of the backgrounds.

    A random grid upsampled bicubically by PIL (C speed: backgrounds are the costliest part of a still image).
    """
    gh, gw = int(h / cell) + 4, int(w / cell) + 4
    grid = rng.standard_normal((channels, gh, gw)).astype(np.float32)
    oy, ox = rng.random(2) + 1.0
    src = (float(ox), float(oy), float(ox + w / cell), float(oy + h / cell))
    out = np.empty((h, w, channels), np.float32)
    for c in range(channels):
        out[..., c] = np.asarray(Image.fromarray(grid[c], "F").resize((w, h), Image.Resampling.BICUBIC, box=src))
    return out


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, textured backdrop (float32 0..255): gradient + 1/f noise + one of a few surface styles."""
    hue = rng.random()
    c1 = _hsv(hue, rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.8))
    c2 = _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.85))
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    a = rng.uniform(0, 2 * math.pi)
    t = x * math.cos(a) + y * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c1 + (c2 - c1) * t[..., None]
    lum = np.zeros((h, w), np.float32)
    for cell, amp in ((80.0, 22.0), (28.0, 12.0), (9.0, 6.0), (3.0, 3.0)):
        lum += amp * rng.uniform(0.4, 1.4) * _smooth_noise(rng, h, w, cell)[..., 0]
    img += lum[..., None] + 8.0 * _smooth_noise(rng, h, w, 60.0, 3)
    style = rng.choice(["plain", "stripes", "wood", "tiles", "blobs", "blobs"])
    b = rng.uniform(0, math.pi)
    proj = x * math.cos(b) + y * math.sin(b)
    if style == "stripes":
        period = rng.uniform(10, 40)
        img += rng.uniform(6, 14) * np.sin(2 * math.pi * proj / period)[..., None]
    elif style == "wood":
        warp = 6.0 * _smooth_noise(rng, h, w, 50.0)[..., 0]
        img += rng.uniform(8, 14) * np.sin(2 * math.pi * proj / rng.uniform(12, 30) + warp)[..., None]
    elif style == "tiles":
        p = rng.uniform(30, 70)
        lines = ((x % p) < 2) | ((y % p) < 2)
        img -= rng.uniform(12, 25) * lines[..., None]
    else:
        for _ in range(rng.integers(2, 6)):  # soft patches, each painted only over its own window
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            rx, ry = rng.uniform(20, 120, 2)
            xa, xb = max(int(cx - 1.6 * rx), 0), min(int(cx + 1.6 * rx) + 1, w)
            ya, yb = max(int(cy - 1.6 * ry), 0), min(int(cy + 1.6 * ry) + 1, h)
            if xb <= xa or yb <= ya:
                continue
            d = np.sqrt(((x[:, xa:xb] - cx) / rx) ** 2 + ((y[ya:yb] - cy) / ry) ** 2)
            alpha = np.clip((1.0 - d) / 0.4 + 0.5, 0.0, 1.0)
            alpha = alpha * alpha * (3 - 2 * alpha)
            img[ya:yb, xa:xb] += alpha[..., None] * rng.uniform(-28, 28, 3).astype(np.float32)
    return img.astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# Objects: a look (shape + texture + palette) rendered to an RGBA sprite, placed with sub-pixel accuracy
# ------------------------------------------------------------------------------------------------------------

SPRITE_MARGIN = 6  # transparent sprite border: lets the sub-pixel resize read a little outside the shape
SPRITE_MAX = 160  # longest rendered side; bigger objects are upsampled when placed (soft, like a close-up)


@dataclass
class Look:
    """Everything that fixes an object's appearance: rendered at any size it is the same-looking object."""

    shape: str
    params: dict[str, Any]
    texture: str
    tex: dict[str, float]
    c1: np.ndarray
    c2: np.ndarray
    c_out: np.ndarray
    outline: float
    light: tuple[float, float]
    noise: np.ndarray = field(repr=False)
    noise_amp: float = 10.0


def _random_shape(rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    kind = rng.choice(["ellipse", "rect", "polygon", "polygon", "blob"])
    if kind == "rect":
        return "rect", {"r": float(rng.uniform(0.0, 0.5))}
    if kind == "ellipse":
        return "ellipse", {}
    if kind == "polygon":
        star = rng.random() < 0.3
        k = int(rng.integers(4, 7)) * 2 if star else int(rng.integers(3, 9))
        ang = 2 * math.pi * (np.arange(k) + rng.uniform(-0.3, 0.3, k)) / k + rng.uniform(0, 2 * math.pi)
        rad = rng.uniform(0.75, 1.0, k)
        if star:
            rad[1::2] *= rng.uniform(0.45, 0.65)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    else:  # a smooth blob: radius = 1 + a few low Fourier terms, tested in polar coordinates
        coef = rng.uniform(-0.18, 0.18, (3, 2))
        th = np.linspace(0, 2 * math.pi, 720, endpoint=False)
        r = _blob_radius(coef, th)
        xs, ys = r * np.cos(th), r * np.sin(th)
        lo, hi = np.array([xs.min(), ys.min()]), np.array([xs.max(), ys.max()])
        return "blob", {"coef": coef, "centre": (lo + hi) / 2, "half": (hi - lo) / 2}
    lo, hi = pts.min(0), pts.max(0)
    pts = (pts - (lo + hi) / 2) / ((hi - lo) / 2)  # stretch so the shape spans exactly [-1, 1] (tight box)
    return "polygon", {"pts": pts}


def _blob_radius(coef: np.ndarray, th: np.ndarray) -> np.ndarray:
    return 1 + sum(c * np.cos((i + 2) * th) + d * np.sin((i + 2) * th) for i, (c, d) in enumerate(coef))


def _shape_mask(look: Look, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of the unit shape at object coordinates (u, v); the shape's tight box is [-1, 1]^2."""
    if look.shape == "ellipse":
        return u * u + v * v <= 1.0
    if look.shape == "rect":
        r = look.params["r"]
        du = np.maximum(np.abs(u) - (1 - r), 0)
        dv = np.maximum(np.abs(v) - (1 - r), 0)
        return (np.abs(u) <= 1) & (np.abs(v) <= 1) & (du * du + dv * dv <= r * r + 1e-9)
    if look.shape == "blob":
        c, hf = look.params["centre"], look.params["half"]
        x = c[0] + u * hf[0]
        y = c[1] + v * hf[1]
        rho = np.sqrt(x * x + y * y)
        z = (x + 1j * y) / np.maximum(rho, 1e-6)  # e^(i theta); its powers give cos/sin(k theta) cheaply
        coef = look.params["coef"]
        zk = z * z
        r = 1.0
        for i in range(len(coef)):
            r = r + coef[i, 0] * zk.real + coef[i, 1] * zk.imag
            zk = zk * z
        return rho <= r
    pts = look.params["pts"]  # even-odd rule, vectorised over pixels, looped over edges
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    for i in range(len(pts)):
        (x0, y0), (x1, y1) = pts[i], pts[i - 1]
        if y0 == y1:
            continue
        cross = (y0 > v) != (y1 > v)
        xint = (x1 - x0) * (v - y0) / (y1 - y0) + x0
        inside ^= cross & (u < xint)
    return inside


def random_look(rng: np.random.Generator, base: Look | None = None) -> Look:
    """A saturated, high-contrast textured object (background palettes are muted, so objects stand out).

    ``base`` gives a look-alike (same shape and texture family, nearby hue): the "confusion" distractor.
    """
    if base is not None:
        hue = colorsys.rgb_to_hsv(*(base.c1 / 255.0))[0] + rng.choice([-1, 1]) * rng.uniform(0.05, 0.12)
        shape, params = base.shape, base.params
        texture = base.texture
    else:
        hue = rng.random()
        shape, params = _random_shape(rng)
        texture = str(rng.choice(["stripes", "checker", "dots", "rings", "noise", "split"]))
    c1 = _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    mode = rng.integers(3)
    if mode == 0:  # complementary
        c2 = _hsv(hue + 0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    elif mode == 1:  # dark shade
        c2 = _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.5, 1.0), rng.uniform(0.08, 0.3))
    else:  # near white
        c2 = _hsv(hue, rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0))
    c_out = _hsv(hue, 0.5, 0.08) if rng.random() < 0.75 else _hsv(0, 0, 0.97)
    ang = rng.uniform(0, math.pi)
    return Look(
        shape=shape,
        params=params,
        texture=texture,
        tex={"freq": float(rng.uniform(1.5, 4.0)), "ang": float(ang), "phase": float(rng.uniform(0, 6.3))},
        c1=c1,
        c2=c2,
        c_out=c_out,
        outline=float(rng.uniform(0.04, 0.1)),
        light=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
        noise=rng.standard_normal((8, 8, 3)).astype(np.float32),
        noise_amp=float(rng.uniform(4, 14)),
    )


def _texture(look: Look, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Surface colour (h, w, 3) at object coordinates: a two-colour pattern, grain and shading."""
    f, a, ph = look.tex["freq"], look.tex["ang"], look.tex["phase"]
    proj = u * math.cos(a) + v * math.sin(a)
    if look.texture == "stripes":
        s = np.sin(math.pi * f * proj + ph)
    elif look.texture == "checker":
        s = np.sin(math.pi * f * u + ph) * np.sin(math.pi * f * v)
    elif look.texture == "dots":
        s = 0.35 - np.sqrt(np.sin(math.pi * f * u) ** 2 + np.sin(math.pi * f * v) ** 2) / 2
    elif look.texture == "rings":
        s = np.sin(math.pi * f * np.sqrt(u * u + v * v) + ph)
    elif look.texture == "split":
        s = proj + 0.15 * np.sin(3 * math.pi * v)
    else:
        s = _lerp_grid(look.noise, (v.ravel() + 1.2) * 2.9, (u.ravel() + 1.2) * 2.9)[..., 0]
    t = 0.5 + 0.5 * np.tanh(6.0 * s)
    col = look.c1 + (look.c2 - look.c1) * t[..., None].astype(np.float32)
    grain = _lerp_grid(look.noise, (v.ravel() + 1.2) * 2.9, (u.ravel() + 1.2) * 2.9)
    col = col + look.noise_amp * grain
    shade = 1.0 + look.light[0] * u + look.light[1] * v - 0.12 * (u * u + v * v)
    return (col * shade[..., None]).astype(np.float32)


def render_sprite(look: Look, sw: int, sh: int) -> Image.Image:
    """RGBA sprite: the object over ``sw x sh`` px (at most SPRITE_MAX) plus a transparent margin; 2x2 AA."""
    scale = min(1.0, SPRITE_MAX / max(sw, sh))
    sw, sh = max(math.ceil(sw * scale), 2), max(math.ceil(sh * scale), 2)
    m = SPRITE_MARGIN
    W, H = sw + 2 * m, sh + 2 * m
    u1 = ((np.arange(W) - m + 0.5) / sw * 2 - 1).astype(np.float32)[None, :]
    v1 = ((np.arange(H) - m + 0.5) / sh * 2 - 1).astype(np.float32)[:, None]
    col = _texture(look, u1, v1)
    u2 = ((np.arange(2 * W) / 2 - m + 0.25) / sw * 2 - 1).astype(np.float32)[None, :]
    v2 = ((np.arange(2 * H) / 2 - m + 0.25) / sh * 2 - 1).astype(np.float32)[:, None]
    outer = _shape_mask(look, u2, v2)
    k = 1.0 - look.outline
    inner = _shape_mask(look, u2 / k, v2 / k)
    alpha = outer.reshape(H, 2, W, 2).mean((1, 3), dtype=np.float32)
    rim = (outer & ~inner).reshape(H, 2, W, 2).mean((1, 3), dtype=np.float32)
    rim = rim / np.maximum(alpha, 1e-6)
    col = col + (look.c_out - col) * rim[..., None]
    rgba = np.concatenate([np.clip(col, 0, 255), alpha[..., None] * 255], axis=-1)
    return Image.fromarray(np.rint(rgba).astype(np.uint8), "RGBA")


def place(
    frame: np.ndarray,
    sprite: Image.Image,
    box: np.ndarray,
    opacity: float = 1.0,
    highlight: tuple[float, float, float] | None = None,
) -> None:
    """Composite ``sprite`` over ``frame`` (float32 HxWx3, in place) so its shape spans ``box`` exactly.

    Sub-pixel placement: PIL resamples the sprite over the source rectangle that maps onto the covered integer
    pixels (antialiased when shrinking), so annotations can be exact fractional corners. ``highlight`` =
    (u, v, amplitude) adds a specular spot at object coordinates.
    """
    H, W = frame.shape[:2]
    x1, y1, x2, y2 = (float(c) for c in box)
    qx0, qy0 = max(math.floor(x1), 0), max(math.floor(y1), 0)
    qx1, qy1 = min(math.ceil(x2), W), min(math.ceil(y2), H)
    if qx1 <= qx0 or qy1 <= qy0:
        return
    m = SPRITE_MARGIN
    sw, sh = sprite.width - 2 * m, sprite.height - 2 * m
    sx, sy = sw / (x2 - x1), sh / (y2 - y1)
    src = (
        min(max(m + (qx0 - x1) * sx, 0.0), sprite.width - 1e-3),
        min(max(m + (qy0 - y1) * sy, 0.0), sprite.height - 1e-3),
        min(m + (qx1 - x1) * sx, float(sprite.width)),
        min(m + (qy1 - y1) * sy, float(sprite.height)),
    )
    patch = np.asarray(sprite.resize((qx1 - qx0, qy1 - qy0), Image.Resampling.BILINEAR, box=src), np.float32)
    a = patch[..., 3:4] * (opacity / 255.0)
    rgb = patch[..., :3]
    if highlight is not None:
        hu, hv, amp = highlight
        u = ((np.arange(qx0, qx1) + 0.5 - x1) / (x2 - x1) * 2 - 1).astype(np.float32)[None, :]
        v = ((np.arange(qy0, qy1) + 0.5 - y1) / (y2 - y1) * 2 - 1).astype(np.float32)[:, None]
        rgb = rgb + amp * np.exp(-((u - hu) ** 2 + (v - hv) ** 2) / 0.15)[..., None]
    region = frame[qy0:qy1, qx0:qx1]
    region += (rgb - region) * a


def to_image(frame: np.ndarray, gray: bool) -> Image.Image:
    """A painted ``frame`` (float32 HxWx3, 0..255) rounded to a uint8 RGB image, or an ``L`` image if ``gray``."""
    im = Image.fromarray(np.clip(frame + 0.5, 0, 255).astype(np.uint8), "RGB")
    return im.convert("L") if gray else im


# ------------------------------------------------------------------------------------------------------------
# Motion: smooth trajectories with scale / aspect change, bouncing inside (or partly beyond) the frame
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knobs:
    """What happens in one video; the ALOV category (or OTB scenario) biases these."""

    speed: float = 0.065  # centre motion per frame as a fraction of the object's size
    turn: float = 0.08  # std of the per-frame heading change, radians
    jerky: bool = False
    zoom: float = 0.15  # amplitude of log-scale oscillation
    aspect: float = 0.05  # amplitude of log-aspect oscillation
    border: bool = False  # allowed to leave the frame by up to 30 %
    distractors: int = 0
    confusion: bool = False
    occluder: bool = False
    occluder_opacity: float = 1.0
    pan: float = 0.0  # camera pan speed, px / frame
    light: float = 0.05  # brightness oscillation amplitude
    spotlight: bool = False
    specular: bool = False
    gray: bool = False


def _trajectory(
    rng: np.random.Generator, T: int, W: int, H: int, size: float, kn: Knobs, speed: float | None = None
) -> np.ndarray:
    """(T, 4) float64 corner boxes of a smoothly moving, breathing object."""
    t = np.arange(T, dtype=np.float64)
    ls = kn.zoom * np.sin(2 * math.pi * t / rng.uniform(40, 120) + rng.uniform(0, 6.3))
    ls += rng.uniform(-1, 1) * kn.zoom * t / max(T, 1)
    la = math.log(rng.uniform(0.6, 1.6)) + kn.aspect * np.sin(
        2 * math.pi * t / rng.uniform(30, 80) + rng.uniform(0, 6.3)
    )
    s = size * np.exp(ls)
    w = s * np.exp(la / 2)
    h = s * np.exp(-la / 2)
    shrink = np.minimum(1.0, np.minimum(0.6 * W / w, 0.6 * H / h))
    w, h = w * shrink, h * shrink
    pad_x = -0.3 * w if kn.border else 3.0 + 0 * w
    pad_y = -0.3 * h if kn.border else 3.0 + 0 * h
    sp0 = kn.speed if speed is None else speed
    theta = rng.uniform(0, 2 * math.pi)
    c = np.array(
        [rng.uniform(w[0] / 2 + 3, W - w[0] / 2 - 3), rng.uniform(h[0] / 2 + 3, H - h[0] / 2 - 3)],
        dtype=np.float64,
    )
    mod = rng.uniform(0.15, 0.35), rng.uniform(20, 60), rng.uniform(0, 6.3)
    factor = 1.0
    centres = np.zeros((T, 2))
    for i in range(T):
        lo = np.array([w[i] / 2 + pad_x[i], h[i] / 2 + pad_y[i]])
        hi = np.array([W, H]) - lo
        for k in range(2):  # bounce off the walls
            if c[k] < lo[k]:
                c[k] = min(2 * lo[k] - c[k], hi[k])
                theta = math.pi - theta if k == 0 else -theta
            elif c[k] > hi[k]:
                c[k] = max(2 * hi[k] - c[k], lo[k])
                theta = math.pi - theta if k == 0 else -theta
        centres[i] = c
        theta += rng.normal(0, kn.turn)
        if kn.jerky and rng.random() < 0.12:
            theta += rng.uniform(-1.5, 1.5)
            factor = rng.uniform(0.3, 1.8)
        step = sp0 * factor * math.sqrt(w[i] * h[i]) * (1 + mod[0] * math.sin(2 * math.pi * i / mod[1] + mod[2]))
        c = c + step * np.array([math.cos(theta), math.sin(theta)])
    return np.stack([centres[:, 0] - w / 2, centres[:, 1] - h / 2, centres[:, 0] + w / 2, centres[:, 1] + h / 2], 1)


def _clip_box(box: np.ndarray, W: int, H: int) -> np.ndarray:
    return np.clip(box, 0, [W, H, W, H])


def video_knobs(rng: np.random.Generator, scenario: str) -> Knobs:
    """Category-typical difficulties on top of a little random variety for every video."""
    kw: dict[str, Any] = {
        "speed": rng.uniform(0.045, 0.085),
        "zoom": rng.uniform(0.05, 0.2),
        "border": rng.random() < 0.2,
        "distractors": int(rng.choice([0, 0, 1, 1, 2])),
        "occluder": rng.random() < 0.15,
        "gray": rng.random() < 0.15,
    }
    match scenario:
        case "01-Light" | "SynLight":
            kw.update(light=0.25, spotlight=True)
        case "02-SurfaceCover":
            kw.update(occluder=True, occluder_opacity=0.55)
        case "03-Specularity":
            kw.update(specular=True)
        case "04-Transparency":
            kw.update(occluder=True, occluder_opacity=0.4)
        case "05-Shape":
            kw.update(aspect=0.3)
        case "06-MotionSmoothness":
            kw.update(jerky=True, turn=0.2)
        case "07-MotionCoherence" | "08-Clutter" | "SynClutter":
            kw.update(distractors=int(rng.integers(3, 6)))
        case "09-Confusion":
            kw.update(distractors=int(rng.integers(1, 3)), confusion=True)
        case "11-Occlusion" | "SynOcclusion":
            kw.update(occluder=True)
        case "12-MovingCamera" | "SynPan":
            kw.update(pan=rng.uniform(1.0, 2.5))
        case "13-ZoomingCamera" | "SynScale":
            kw.update(zoom=rng.uniform(0.3, 0.45))
        case "SynBorder":
            kw.update(border=True, speed=rng.uniform(0.07, 0.09))
        case "SynFast":
            kw.update(speed=rng.uniform(0.1, 0.13))
        case "SynGray":
            kw.update(gray=True)
    if scenario.startswith("Syn") and scenario != "SynGray":
        kw["gray"] = False
    return Knobs(**kw)


@dataclass
class Video:
    """A rendered clip: frames (uint8 images) and the target's 0-based corner boxes, clipped to the frame."""

    frames: list[Image.Image]
    boxes: np.ndarray
    width: int
    height: int
    gray: bool


def render_video(rng: np.random.Generator, T: int, W: int, H: int, size: float, kn: Knobs) -> Video:
    """Paint ``T`` frames: (panned) background, distractors behind, target, occluder in front, lighting."""
    margin = int(math.ceil(kn.pan * T / 2)) + 2 if kn.pan else 0
    bg = background(rng, H + 2 * margin, W + 2 * margin)
    look = random_look(rng)
    boxes = _trajectory(rng, T, W, H, size, kn)
    sprite = render_sprite(
        look, math.ceil((boxes[:, 2] - boxes[:, 0]).max()), math.ceil((boxes[:, 3] - boxes[:, 1]).max())
    )
    others: list[tuple[Image.Image, np.ndarray, float]] = []
    for _ in range(kn.distractors):
        dl = random_look(rng, base=look if kn.confusion else None)
        dsize = size * rng.uniform(0.6, 1.3)
        db = _trajectory(rng, T, W, H, dsize, replace(kn, border=True), speed=rng.uniform(0.0, 0.06))
        ds = render_sprite(dl, math.ceil((db[:, 2] - db[:, 0]).max()), math.ceil((db[:, 3] - db[:, 1]).max()))
        others.append((ds, db, 1.0))
    front: list[tuple[Image.Image, np.ndarray, float]] = []
    if kn.occluder:
        tc = int(rng.uniform(0.3, 0.7) * T)
        dur = rng.uniform(12, 24)
        st = math.sqrt((boxes[tc, 2] - boxes[tc, 0]) * (boxes[tc, 3] - boxes[tc, 1]))
        so = st * rng.uniform(0.5, 0.9)
        phi = rng.uniform(0, 2 * math.pi)
        d = np.array([math.cos(phi), math.sin(phi)])
        perp = np.array([-d[1], d[0]]) * rng.choice([-1, 1]) * rng.uniform(0.3, 0.55) * (st + so) / 2
        ctr0 = (boxes[tc, :2] + boxes[tc, 2:]) / 2 + perp
        ctr = ctr0[None] + d[None] * ((np.arange(T) - tc) * (st + so) / dur)[:, None]
        ar = math.sqrt(rng.uniform(0.6, 1.6))
        half = np.array([so * ar, so / ar]) / 2
        ob = np.concatenate([ctr - half, ctr + half], axis=1)
        osp = render_sprite(random_look(rng), math.ceil(2 * half[0]), math.ceil(2 * half[1]))
        front.append((osp, ob, kn.occluder_opacity))
    lp = rng.uniform(25, 70), rng.uniform(0, 6.3)
    pan_dir = rng.uniform(0, 2 * math.pi)
    spot = rng.uniform([0, 0], [W, H]), rng.uniform(-2, 2, 2), rng.uniform(0.35, 0.6) * max(W, H)
    spec = rng.uniform(0.05, 0.15), rng.uniform(0, 6.3)
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    frames: list[Image.Image] = []
    for i in range(T):
        ox = oy = margin
        if margin:
            r = kn.pan * (i - T / 2)
            ox = int(round(margin + r * math.cos(pan_dir)))
            oy = int(round(margin + r * math.sin(pan_dir)))
        frame = bg[oy : oy + H, ox : ox + W].copy()
        for sp, bx, op in others:
            place(frame, sp, bx[i], op)
        hl = None
        if kn.specular:
            hl = (0.45 * math.cos(spec[0] * i + spec[1]), 0.45 * math.sin(1.3 * spec[0] * i + spec[1]), 110.0)
        place(frame, sprite, boxes[i], 1.0, hl)
        for sp, bx, op in front:
            place(frame, sp, bx[i], op)
        gain = 1.0 + kn.light * math.sin(2 * math.pi * i / lp[0] + lp[1])
        if kn.spotlight:
            sc = spot[0] + spot[1] * i
            g = np.exp(-((xx - sc[0]) ** 2 + (yy - sc[1]) ** 2) / (2 * spot[2] ** 2))
            frame *= (gain * (0.65 + 0.55 * g))[..., None]
        else:
            frame *= gain
        frames.append(to_image(frame, kn.gray))
    return Video(frames, _clip_box(boxes, W, H), W, H, kn.gray)
