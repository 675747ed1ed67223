"""Full-decode validation of one input image, and the rule for when its bytes may be copied into a shard.

The full decode of a JPEG is libjpeg-turbo's in strict mode (`shards.jpeg.libjpeg_warning`: the decoder under
PIL and DALI's CPU backend, with warnings as errors); PIL decodes PNGs and what is re-encoded.

A shard JPEG must decode to the same RGB pixels in every reader (PIL, DALI's CPU decoder, nvJPEG). So an input is
copied (byte for byte, but for the lossless repairs below) only when it is a JPEG (baseline, extended-sequential or
progressive, 8-bit) that decodes completely to 3-channel RGB. PNG-named-JPEG, CMYK, grayscale and other modes are
converted to RGB and re-encoded (baseline JPEG, quality 95); 16-bit samples keep their high byte, as ``cv2.imread``
(the authors' reader) does. A JPEG with an EXIF orientation tag other than 1 in any of its EXIF segments has all of
them removed (pixels untouched), because DALI applies EXIF orientation (of the last segment) by default while the
boxes refer to the stored pixels. Anything that does not decode completely is rejected with a reason, and so are a
JPEG whose scans stop short (cut at a scan boundary, which no decoder notices) and a JPEG on which libjpeg-turbo
warns (decoders fill its missing blocks with grey without an error). Two kinds of warning lose no pixel: junk
before the end-of-image marker (all blocks decoded: re-encoded), and what `shards.jpeg.repair` rewrites as libjpeg
reads it (a missing end marker, header fields it ignores, stray bytes between header segments: repaired, then
checked again). Nothing here raises for bad data except `ImageRejected`.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from model.image_modes import SIXTEEN_BIT_MODES, to_rgb8
from shards.format import MAX_PIXELS
from shards.input_files import FileTooLarge, NotRegularFile, read_regular
from shards.jpeg import (
    TRAILING_JUNK,
    LibjpegCannotCheck,
    exif_orientation,
    jpeg_header,
    libjpeg_warning,
    repair,
    uncoded_scans,
)

MAX_IMAGE_BYTES = 64 << 20  # refuse to read larger files (largest real ImageNet/ALOV frames are a few MB)
REENCODE_QUALITY = 95

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COPYABLE_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class ImageRejected(Exception):
    """The image cannot be used; ``code`` is the short reason recorded in the manifest."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class CheckedImage:
    """Bytes to store (original or converted), decoded size, and why the bytes changed (None = unchanged)."""

    data: bytes
    width: int
    height: int
    converted: str | None


def read_image_file(path: str) -> bytes:
    """Read an image file with a size bound; missing or unreadable files become `ImageRejected`."""
    try:
        return read_regular(path, MAX_IMAGE_BYTES)
    except NotRegularFile as e:
        raise ImageRejected("not_regular_file", str(e)) from e
    except FileTooLarge as e:
        raise ImageRejected("image_too_large", str(e)) from e
    except FileNotFoundError as e:
        raise ImageRejected("missing_image", "file not found") from e
    except OSError as e:
        raise ImageRejected("unreadable_image", f"{type(e).__name__}: {e.strerror or e}") from e


@contextmanager
def _pil_pixel_limit(limit: int) -> Iterator[None]:
    """PIL's decompression-bomb limit set to ours while decoding, then restored: the rule that applies is
    `MAX_PIXELS` (not PIL's version-dependent default), and other users of PIL in the process are unaffected.
    Not thread-safe (PIL's limit is a module global); the builder decodes in single-threaded processes."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _decoder_errors() -> Iterator[None]:
    """PIL's failures on a broken or oversized file as `ImageRejected`, never an exception escaping."""
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(MAX_PIXELS):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:  # PIL's check of MAX_PIXELS
        raise ImageRejected("image_too_large", f"more than {MAX_PIXELS} pixels: {e}") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for broken files
        message = _ADDRESS.sub("<data>", str(e))  # no object addresses: the manifest stays reproducible
        raise ImageRejected("corrupt_image", f"{type(e).__name__}: {message}") from e


def _open(data: bytes, fmt: str) -> Image.Image:
    """Open: the header, with the size limits (no decode yet)."""
    with _decoder_errors():
        im = Image.open(io.BytesIO(data), formats=(fmt,))
        w, h = im.size
        if w < 1 or h < 1 or w * h > MAX_PIXELS:
            raise ImageRejected("image_too_large", f"{w}x{h} pixels")
    return im


def _load(im: Image.Image) -> Image.Image:
    with _decoder_errors():
        im.load()
    return im


def _reencode(im: Image.Image) -> bytes:
    try:
        rgb = to_rgb8(im)
    except ValueError as e:  # float samples, 32-bit integers beyond 16 bits
        raise ImageRejected("unsupported_image", str(e)) from e
    except Exception as e:  # an exotic mode PIL cannot convert
        raise ImageRejected("unsupported_image", f"cannot convert {im.mode} to RGB: {e}") from e
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=REENCODE_QUALITY)
    return buf.getvalue()


def _without(data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    """``data`` minus the given sorted, disjoint byte ranges."""
    parts, start = [], 0
    for a, b in ranges:
        parts.append(data[start:a])
        start = b
    return b"".join([*parts, data[start:]])


def check_image(data: bytes) -> CheckedImage:
    """Validate by a full decode; return what to store in the shard."""
    if not data:
        raise ImageRejected("empty_image", "0 bytes")
    if data.startswith(PNG_MAGIC):
        im = _load(_open(data, "PNG"))
        reason = "png_16bit" if im.mode in SIXTEEN_BIT_MODES else "png"
        return CheckedImage(_reencode(im), im.width, im.height, reason)
    if data.startswith(JPEG_MAGIC[:2]) and not data.startswith(JPEG_MAGIC):  # SOI, then no marker: damaged
        raise ImageRejected("corrupt_image", f"JPEG start-of-image not followed by a marker ({data[:8].hex()})")
    if not data.startswith(JPEG_MAGIC):
        raise ImageRejected("unsupported_format", f"neither JPEG nor PNG (starts with {data[:8].hex()})")
    return _check_jpeg(data)


def _check_jpeg(data: bytes) -> CheckedImage:
    """One full decode for the common case, a JPEG copied as is: libjpeg-turbo's strict one (PIL opens the header
    only). PIL decodes what is re-encoded from its pixels, and what the TurboJPEG API cannot check."""
    sof, exif, precision = jpeg_header(data)
    im = _open(data, "JPEG")
    copyable = sof in COPYABLE_SOF and precision == 8 and im.mode == "RGB"
    changes: list[str] = []
    try:
        warning = libjpeg_warning(data)
        # A repaired file is checked again (libjpeg's first warning may hide another); each repair is made once.
        while warning is not None and (fix := repair(data, warning)) is not None and fix[1] not in changes:
            data = fix[0]
            changes.append(fix[1])
            warning = libjpeg_warning(data)
    except LibjpegCannotCheck:
        warning = None
        _load(im)  # PIL's full decode is the only check (shards/jpeg.py: limits)
    except ValueError as e:
        if copyable:
            raise ImageRejected("corrupt_image", f"libjpeg-turbo: {e}") from e
        warning = None  # e.g. a 12-bit JPEG, which libjpeg-turbo's 8-bit decoder refuses: PIL judges
    if warning is not None and not TRAILING_JUNK.fullmatch(warning):
        raise ImageRejected("corrupt_image", f"libjpeg-turbo warns: {warning}")
    if uncoded := uncoded_scans(data):  # decodes without a warning anywhere
        raise ImageRejected("corrupt_image", f"incomplete JPEG: {uncoded}")
    if sof not in COPYABLE_SOF or precision != 8:
        reason = f"jpeg_sof{(sof or 0) - 0xC0}_{precision}bit"
    elif im.mode != "RGB":
        reason = {"L": "grayscale", "CMYK": "cmyk"}.get(im.mode, f"mode_{im.mode}")
    elif warning is not None:  # every block decoded; re-encoded so that no reader has to recover from junk
        reason = "jpeg_trailing_junk"
    else:
        if changes:  # a header repair may have moved the Exif segments
            exif = jpeg_header(data)[1]
        if any(exif_orientation(data[a:b]) != 1 for a, b in exif):  # every one goes
            data = _without(data, exif)
            changes.append("exif_orientation")
        return CheckedImage(data, im.width, im.height, ",".join(changes) or None)
    return CheckedImage(_reencode(_load(im)), im.width, im.height, reason)
