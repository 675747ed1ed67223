"""What a shard JPEG is beyond "PIL decodes it": the rules the builder makes inputs meet and `shards.verify` checks.

One place for them, because shards come from other writers too: the header walk (SOF, precision, every Exif
segment), the EXIF orientation rule, and the clean-decode rule.

Why a clean decode needs its own check: libjpeg *warns*, it does not fail, when a JPEG's entropy-coded data stops
early. A file cut short and closed with an EOI marker (as some downloaders and repair tools leave them) decodes
in PIL, DALI's CPU decoder and OpenCV without an error, its missing blocks filled with flat grey (128) under
boxes that describe the real object. libjpeg-turbo through ``simplejpeg`` (a maintained binding whose strict
mode raises on libjpeg warnings; PIL exposes none) finds those.
"""

from __future__ import annotations

import re

import simplejpeg
from PIL import Image

from shards.format import MAX_PIXELS

ALL_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
EXIF_ORIENTATION = 0x0112
# The one warning after which every coefficient was decoded: junk between the last scan and the end-of-image
# marker (libjpeg reads up to the next marker, and EOI is the last). Any other warning may hide lost data.
TRAILING_JUNK = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9")
# The output that decodes every component's data at the least cost, per source colorspace: grey skips the
# chroma IDCT and colour conversion of YCbCr; RGB and CMYK sources convert to nothing cheaper than themselves.
_CHECK_COLORSPACE = {"RGB": "RGB", "CMYK": "CMYK", "YCCK": "CMYK"}


def jpeg_header(data: bytes) -> tuple[int | None, list[tuple[int, int]], int]:
    """(SOF marker, byte ranges of every APP1 Exif segment, sample precision) from the segments before SOS.

    Every Exif segment, not just the first: PIL reads the first, DALI obeys the last.
    """
    i, n = 2, len(data)
    sof: int | None = None
    exif: list[tuple[int, int]] = []
    precision = 8
    while i + 4 <= n:
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them with a warning, so do we
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            i += 2
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or marker == 0xDA:  # broken length (the decoder will judge) or start of scan: header over
            break
        if marker in ALL_SOF and sof is None:
            sof = marker
            precision = data[i + 4] if i + 4 < n else 8
        elif marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\0\0":
            exif.append((i, i + 2 + length))
        i += 2 + length
    return sof, exif, precision


def exif_orientation(segment: bytes) -> int | None:
    """EXIF orientation of one APP1 segment (1 when it has none), or None when the segment cannot be parsed."""
    try:
        exif = Image.Exif()
        exif.load(segment[4:])  # after marker and length: b"Exif\0\0" + TIFF header
        return int(exif.get(EXIF_ORIENTATION, 1))
    except Exception:
        return None


def oriented_exif(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the Exif segments with an orientation other than 1 or none that parses (empty: upright)."""
    return [(a, b) for a, b in jpeg_header(data)[1] if exif_orientation(data[a:b]) != 1]


def libjpeg_warning(data: bytes) -> str | None:
    """libjpeg-turbo's first warning while decoding all of ``data``, or None when it decodes cleanly.

    Raises ValueError when libjpeg-turbo cannot decode the file at all (a fatal error) or it has more than
    `MAX_PIXELS` pixels. Only the first warning is
    known, which is why `TRAILING_JUNK` (nothing can follow it but EOI) is the only warning worth telling apart.
    """
    height, width, source_colorspace, _ = simplejpeg.decode_jpeg_header(data)  # ValueError when unreadable
    if height * width > MAX_PIXELS:
        raise ValueError(f"{width}x{height}: more than {MAX_PIXELS} pixels")
    colorspace = _CHECK_COLORSPACE.get(source_colorspace, "GRAY")
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
        return None
    except ValueError as strict_error:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=False)  # ValueError: not a warning but fatal
        return str(strict_error)
