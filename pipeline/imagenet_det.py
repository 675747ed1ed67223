"""ImageNet DET 2014 annotations, read exactly as the authors' ``loader_imagenet_det.cpp`` reads them.

One XML per image: ``folder`` and ``filename`` give the image ``<images>/<folder>/<filename>.JPEG``; ``size``
is the display size the boxes refer to. Fields are found by tag name, never by position. Per object (in this
order, as the C++): drop it when ``xmax-xmin > 0.66*width`` or ``ymax-ymin > 0.66*height`` (``too_large``),
then when ``xmin<0``, ``ymin<0``, ``xmax<=xmin`` or ``ymax<=ymin`` (``invalid_box``). Integers are read like C
``atoi``. When the decoded image size differs from the display size, every coordinate is multiplied by
``decoded_height / display_height`` (the height factor only, as in the C++).

Robustness on top of the authors (they crash or read garbage on such files): XML files over `MAX_XML_BYTES`
or with over `MAX_OBJECTS` objects, malformed XML, a missing folder/filename/size, or an image path escaping the
images root make the XML an ``xml_error``; an object whose coordinates are missing or not numbers is dropped as
``bad_coordinates``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from shards.input_files import FileTooLarge, read_regular

MAX_RATIO = 0.66  # kMaxRatio
MAX_XML_BYTES = 4 << 20  # a real DET XML is < 10 KB
MAX_OBJECTS = 1000  # a real DET image has at most a few dozen; each object becomes a record (and a skip entry)
IMAGE_SUFFIX = ".JPEG"
LAYOUT = "<annotations>/<synset or ILSVRC2014_train_NNNN>/*.xml"  # the one level the C++ reads

_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]{1,12})(?![0-9])")  # ASCII digits; longer runs are not ints
_parser: etree.XMLParser | None = None


class XmlError(ValueError):
    """The XML cannot be used (reason text goes to the manifest)."""


@dataclass(frozen=True)
class XmlObject:
    """One ``<object>``: its position, synset name, box as read, and why the rules drop it (None = kept)."""

    index: int
    name: str | None
    box: tuple[int, int, int, int] | None  # (xmin, ymin, xmax, ymax)
    drop: str | None


@dataclass(frozen=True)
class XmlAnnotation:
    """What the authors read from one XML file."""

    folder: str
    filename: str
    width: int
    height: int
    objects: tuple[XmlObject, ...]

    @property
    def image_relpath(self) -> str:
        return f"{self.folder}/{self.filename}{IMAGE_SUFFIX}"


def _hardened_parser() -> etree.XMLParser:
    """No entity expansion, DTD or network access, no huge-tree mode: hostile XML cannot blow up/reach out."""
    global _parser
    if _parser is None:
        _parser = etree.XMLParser(
            resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False, dtd_validation=False
        )
    return _parser


def atoi(text: str | None) -> int | None:
    """C ``atoi`` (leading integer, rest ignored); None where atoi would silently give 0 for a non-number, and
    outside C's int range, where atoi is undefined (a 400-digit <width> once ended the build in OverflowError)."""
    m = _ATOI.match(text or "")
    value = int(m.group(1)) if m else None
    return value if value is not None and -(2**31) <= value < 2**31 else None


def rule_drop_reason(box: tuple[int, int, int, int], width: int, height: int) -> str | None:
    """The authors' two object filters, in their order; None when the object is kept."""
    xmin, ymin, xmax, ymax = box
    if xmax - xmin > MAX_RATIO * width or ymax - ymin > MAX_RATIO * height:
        return "too_large"
    if xmin < 0 or ymin < 0 or xmax <= xmin or ymax <= ymin:
        return "invalid_box"
    return None


def _child_text(el: etree._Element, tag: str) -> str | None:
    child = el.find(tag)
    return None if child is None else child.text


def _safe_component(text: str | None, what: str) -> str:
    """folder/filename become path components: refuse anything that could leave the images root."""
    value = (text or "").strip()
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise XmlError(f"missing or unsafe <{what}> {value!r}")
    return value


def parse_annotation(data: bytes) -> XmlAnnotation:
    """Parse one DET XML document (bytes) into what the authors use; `XmlError` when it cannot be used."""
    if len(data) > MAX_XML_BYTES:
        raise XmlError(f"file larger than {MAX_XML_BYTES} bytes")
    try:
        root = etree.fromstring(data, _hardened_parser())
    except etree.XMLSyntaxError as e:
        raise XmlError(f"malformed XML: {e}") from e
    folder = _safe_component(_child_text(root, "folder"), "folder")
    filename = _safe_component(_child_text(root, "filename"), "filename")
    size = root.find("size")
    if size is None:
        raise XmlError("no <size>")
    width, height = atoi(_child_text(size, "width")), atoi(_child_text(size, "height"))
    if width is None or height is None or width <= 0 or height <= 0:
        raise XmlError(f"invalid <size>: width {_child_text(size, 'width')!r}, height {_child_text(size, 'height')!r}")
    found = root.findall("object")
    if len(found) > MAX_OBJECTS:
        raise XmlError(f"{len(found)} objects, more than {MAX_OBJECTS}: not a DET annotation")
    objects = []
    for index, obj in enumerate(found):
        bnd = obj.find("bndbox")
        vals = [atoi(_child_text(bnd, t)) if bnd is not None else None for t in ("xmin", "ymin", "xmax", "ymax")]
        name = _child_text(obj, "name")
        if any(v is None for v in vals):
            objects.append(XmlObject(index, name, None, "bad_coordinates"))
            continue
        box = (vals[0], vals[1], vals[2], vals[3])
        objects.append(XmlObject(index, name, box, rule_drop_reason(box, width, height)))
    return XmlAnnotation(folder, filename, width, height, tuple(objects))


def read_annotation(path: str) -> XmlAnnotation:
    """Read (bounded) and parse one XML file."""
    try:
        data = read_regular(path, MAX_XML_BYTES)
    except FileTooLarge as e:
        raise XmlError(f"file larger than {MAX_XML_BYTES} bytes ({e})") from None
    return parse_annotation(data)


def list_annotation_files(ann_root: Path) -> tuple[list[Path], list[tuple[Path, int]]]:
    """XML files in sorted sub-folders (one level, as the C++), and the skipped ``*extra*`` folders with
    sizes.

    The ``ILSVRC2013_train_extra*`` folders hold negative images only; the authors' unpack script skips them.
    """
    files: list[Path] = []
    extras: list[tuple[Path, int]] = []
    for sub in sorted(p for p in ann_root.iterdir() if p.is_dir()):
        # every entry so named: a FIFO, dangling link or loop is then a counted skip with its reason, not lost
        xmls = sorted(e.path for e in os.scandir(sub) if e.name.endswith(".xml"))
        if "extra" in sub.name:
            extras.append((sub, len(xmls)))
        else:
            files.extend(Path(x) for x in xmls)
    return files, extras


def scale_box(
    box: tuple[float, float, float, float], display_w: int, display_h: int, image_w: int, image_h: int
) -> tuple[tuple[float, float, float, float], bool]:
    """The C++ ``LoadAnnotation`` rescale: all coordinates times rows/display_height when the sizes differ."""
    if (image_w, image_h) == (display_w, display_h):
        return (float(box[0]), float(box[1]), float(box[2]), float(box[3])), False
    f = image_h / display_h
    return (box[0] * f, box[1] * f, box[2] * f, box[3] * f), True
