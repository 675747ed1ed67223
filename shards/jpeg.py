"""What a shard JPEG is beyond "PIL decodes it": the rules the builder makes inputs meet and `shards.verify` checks.

One place for them, because shards come from other writers too: the marker walk (SOF, precision, every Exif
segment, every scan header), the EXIF orientation rule, and the clean-decode rule.

Why a clean decode needs its own check: libjpeg *warns*, it does not fail, when a JPEG's entropy-coded data stops
early. A file cut short and closed with an EOI marker (as some downloaders and repair tools leave them) decodes
in PIL, DALI's CPU decoder and OpenCV without an error, its missing blocks filled with flat grey (128) under
boxes that describe the real object. libjpeg-turbo through ``simplejpeg`` (a maintained binding whose strict
mode raises on libjpeg warnings; PIL exposes none) finds those.

A file cut exactly at a scan boundary (a progressive JPEG without its last refinement scans, a sequential one
without its chroma scans) decodes without a warning anywhere, blurred or colourless: `uncoded_scans` finds it
from the scan headers.

Limits: only libjpeg's first warning is known (so the warnings it decodes around without losing a pixel, a
missing end marker and `HEADER_REPAIRABLE`, are repaired by `repair` and the file checked again, not
tolerated); the TurboJPEG API cannot decode some valid files (sampling factors it has no name for, 12-bit,
lossless: `LibjpegCannotCheck`), which PIL's decode then judges alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import simplejpeg
from PIL import Image

from shards.format import MAX_PIXELS

ALL_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
SEQUENTIAL_SOF = frozenset({0xC0, 0xC1, 0xC5, 0xC9, 0xCD})  # DCT, not progressive, not lossless
PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
EXIF_ORIENTATION = 0x0112
# Junk between the last scan and the end-of-image marker: libjpeg found all of the image's blocks before it
# (so no grey fill), though it cannot tell whether they are the original data.
TRAILING_JUNK = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9")
# Header fields libjpeg warns about and then ignores (a sequential scan's Ss/Se/Ah/Al, which some phone cameras
# write wrongly; a JFIF major version other than 1) and stray bytes it skips between header segments (after a
# segment whose length field undercounts): `repair_header` writes the header as libjpeg reads it.
HEADER_REPAIRABLE = re.compile(
    r"Invalid SOS parameters for sequential JPEG|Warning: unknown JFIF revision number \d+\.\d+"
    r"|Corrupt JPEG data: \d+ extraneous bytes before marker 0x(?!d9)[0-9a-f]{2}"
)
# The data ends without an end-of-image marker. libjpeg gives the same warning first for a file cut inside a scan,
# so `repair` appends the marker and the check runs again: a cut file then warns of its missing data.
MISSING_EOI = "Premature end of JPEG file"
EOI = b"\xff\xd9"
# The texts of libjpeg's warnings (jerror.h JWRN_*), as opposed to its fatal errors.
_WARNING_TEXT = re.compile(
    r"Corrupt JPEG data|Warning: |Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression"
    r"|Unknown Adobe color transform|Application transferred too many scanlines"
)
# TurboJPEG API errors on valid files that libjpeg's own API (PIL's, DALI's) decodes.
_CANNOT_CHECK = re.compile(
    r"Could not determine subsampling level|Unsupported JPEG data precision|Unsupported JPEG process"
)
# The output that decodes every component's data at the least cost, per source colorspace: grey skips the
# chroma IDCT and colour conversion of YCbCr; RGB and CMYK sources convert to nothing cheaper than themselves.
_CHECK_COLORSPACE = {"RGB": "RGB", "CMYK": "CMYK", "YCCK": "CMYK"}


class LibjpegCannotCheck(ValueError):
    """The TurboJPEG API cannot decode this JPEG although it may be valid (see `_CANNOT_CHECK`)."""


def segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(marker, start, end)`` of every marker segment of a JPEG, in order, until EOI or the data ends.

    Scans' entropy-coded data is skipped to the next marker that is neither a stuffed ``FF 00`` nor a restart
    marker; stray bytes between segments are skipped as libjpeg skips them (with a warning). A segment whose
    length field is broken or runs past the data ends the walk (the decoder will judge the file), so every
    yielded segment lies inside ``data``.
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:  # stray bytes between segments
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # standalone markers (and a stray stuffed byte)
            i += 2
            continue
        if marker == 0xD9:
            return
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return
        yield marker, i, i + 2 + length
        i += 2 + length
        if marker == 0xDA:  # entropy-coded data follows: find the next real marker
            while (j := data.find(b"\xff", i)) >= 0 and j + 1 < n:
                following = data[j + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    i = j + 2
                elif following == 0xFF:
                    i = j + 1
                else:
                    i = j
                    break
            else:
                return


def jpeg_header(data: bytes) -> tuple[int | None, list[tuple[int, int]], int]:
    """(SOF marker, byte ranges of every APP1 Exif segment, sample precision) from the segments before SOS.

    Every Exif segment, not just the first: PIL reads the first, DALI obeys the last.
    """
    sof: int | None = None
    exif: list[tuple[int, int]] = []
    precision = 8
    for marker, start, end in segments(data):
        if marker == 0xDA:
            break
        if marker in ALL_SOF and sof is None:
            sof = marker
            precision = data[start + 4] if start + 4 < len(data) else 8
        elif marker == 0xE1 and data[start + 4 : start + 10] == b"Exif\0\0":
            exif.append((start, end))
    return sof, exif, precision


def uncoded_scans(data: bytes) -> str | None:
    """What a JPEG's scans leave uncoded, or None when every component is coded (sequential) or every
    coefficient of every component reaches full precision, Al = 0 (progressive).

    A file cut exactly at a scan boundary and closed with EOI decodes without any warning: a progressive one
    blurred or colourless, a sequential one with a scan per component without its chroma. The standard allows a
    progression that stops short (libjpeg accepts such a scan script), but common encoders always code
    everything: such files are refused like cut ones. Lossless files and malformed headers: None (not judged
    here; the decoder judges). Linear in the file: segment lengths are checked before their fields are read.
    """
    sof, comps, need = None, [], {}
    for marker, start, end in segments(data):
        if marker in ALL_SOF and sof is None:
            n = data[start + 9] if start + 9 < end else 0
            if not 1 <= n <= 4 or end - start != 10 + 3 * n or marker in LOSSLESS_SOF:
                return None
            sof, comps = marker, [data[start + 10 + 3 * i] for i in range(n)]
            full = (1 << 64) - 1 if sof in PROGRESSIVE_SOF else 1  # coefficients still to code, as a bit mask
            need = dict.fromkeys(comps, full)
        elif marker == 0xDA and sof is not None:
            n = data[start + 4] if start + 4 < end else 0
            if not 1 <= n <= 4 or end - start != 8 + 2 * n:
                return None
            ss, se, al = data[end - 3], min(data[end - 2], 63), data[end - 1] & 0x0F
            coded = 1 if sof not in PROGRESSIVE_SOF else ((1 << (se + 1)) - (1 << ss) if al == 0 and ss <= se else 0)
            for c in (data[start + 5 + 2 * i] for i in range(n)):
                if c in need:
                    need[c] &= ~coded
            if not any(need.values()):
                return None
    if sof is None:
        return None
    short = [c for c in comps if need[c]]
    if sof not in PROGRESSIVE_SOF:
        return f"no scan codes component(s) {short} of {comps} (a file cut at a scan boundary?)"
    missing = sum(bin(need[c]).count("1") for c in short)
    return (
        f"its scans leave {missing} coefficient(s) of component(s) {short} short of full precision (a progressive "
        "file cut at a scan boundary, or a partial progression)"
    )


def repair(data: bytes, warning: str) -> tuple[bytes, str] | None:
    """``data`` as libjpeg reads it despite ``warning`` (the same pixels), and the name of the change; None when
    the warning is not one whose repair loses nothing. The caller checks the result again."""
    if HEADER_REPAIRABLE.fullmatch(warning):
        return repair_header(data), "jpeg_header_repaired"
    if warning == MISSING_EOI and not data.endswith(EOI):
        return data + EOI, "jpeg_eoi_added"
    return None


def repair_header(data: bytes) -> bytes:
    """``data`` with its header as libjpeg reads it when it warns `HEADER_REPAIRABLE` (pixels unchanged): every
    scan header of a sequential JPEG set to Ss=0, Se=63, Ah=Al=0, a JFIF major version set to 1, and the bytes
    between the segments before the first scan dropped. From the first scan on, the bytes between segments are
    entropy-coded data and stay."""
    sof = jpeg_header(data)[0]
    out, rest, scanned = bytearray(data[:2]), 2, False
    for marker, start, end in segments(data):
        segment = bytearray(data[start:end])
        if marker == 0xE0 and segment[4:9] == b"JFIF\0" and len(segment) >= 11:
            segment[9] = 1
        elif marker == 0xDA and sof in SEQUENTIAL_SOF and len(segment) > 7:
            segment[-3:] = b"\x00\x3f\x00"
        if scanned:
            out += data[rest:start]
        out += segment
        rest, scanned = end, scanned or marker == 0xDA
    return bytes(out + data[rest:])


def exif_orientation(segment: bytes) -> int | None:
    """EXIF orientation of one APP1 segment (1 when it has none), or None when the segment cannot be parsed."""
    try:
        exif = Image.Exif()
        exif.load(segment[4:])  # after marker and length: b"Exif\0\0" + TIFF header
        return int(exif.get(EXIF_ORIENTATION, 1))
    except Exception:
        return None


def libjpeg_warning(data: bytes) -> str | None:
    """libjpeg-turbo's first warning while decoding all of ``data``, or None when it decodes cleanly.

    Raises `LibjpegCannotCheck` for a file the TurboJPEG API cannot decode but may be valid, ValueError for any
    other fatal error or more than `MAX_PIXELS` pixels.
    """
    try:
        return _first_warning(data)
    except ValueError as e:
        if _CANNOT_CHECK.search(str(e)):
            raise LibjpegCannotCheck(str(e)) from e
        raise
    except MemoryError:
        raise
    except Exception as e:  # anything else simplejpeg raises on a broken file
        raise ValueError(f"{type(e).__name__}: {e}") from e


def _first_warning(data: bytes) -> str | None:
    try:
        height, width, source_colorspace, _ = simplejpeg.decode_jpeg_header(data, strict=False)
    except KeyError as e:  # simplejpeg names no subsampling TurboJPEG could not determine when libjpeg also warns
        raise LibjpegCannotCheck(f"no subsampling level for this JPEG's sampling factors ({e!r})") from e
    if height * width > MAX_PIXELS:
        raise ValueError(f"{width}x{height}: more than {MAX_PIXELS} pixels")
    colorspace = _CHECK_COLORSPACE.get(source_colorspace, "GRAY")
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
        return None
    except ValueError as strict_error:
        message = str(strict_error)
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=False)
    except ValueError:
        if not _WARNING_TEXT.match(message):
            raise  # fatal, not a warning
        # else a warning met while reading the header, which simplejpeg raises even when lenient
    return message
