"""Read and write Caffe ``.caffemodel`` files with the ``protobuf`` library, without Caffe.

The message classes are built at run time from a descriptor of the subset of BVLC ``caffe.proto`` that weights
need (field numbers as in ``src/caffe/proto/caffe.proto``):

- ``NetParameter``: ``name`` 1, ``layers`` 2 (V1LayerParameter, deprecated), ``input`` 3, ``input_dim`` 4,
  ``layer`` 100 (LayerParameter).
- ``LayerParameter``: ``name`` 1, ``type`` 2 (string), ``bottom`` 3, ``top`` 4, ``blobs`` 7.
- ``V1LayerParameter``: ``layer`` 1 (V0LayerParameter), ``bottom`` 2, ``top`` 3, ``name`` 4, ``type`` 5 (enum,
  read as int32), ``blobs`` 6; ``V0LayerParameter``: ``name`` 1, ``type`` 2, ``blobs`` 50.
- ``BlobProto``: legacy ``num`` 1 / ``channels`` 2 / ``height`` 3 / ``width`` 4, ``data`` 5 (packed float),
  ``diff`` 6, ``shape`` 7 (``BlobShape``: ``dim`` 1, packed int64), ``double_data`` 8.

Fields not declared here (layer parameters, ``diff``...) are skipped by the parser. ``data`` is declared as
``repeated bytes``: a packed ``repeated float`` has exactly the wire form of a length-delimited byte string, so
the 400 MB of weights arrive as one buffer (one per chunk, for writers that split a blob's floats into several
packed runs) that numpy views without a per-float Python loop. Files written by old Caffe with unpacked floats
fall back to a second class that declares the field as ``repeated float``. Writers append the bytes:
``blob.data.append(array.astype("<f4").tobytes())``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

MAX_FILE_BYTES = 2 * 1024**3  # protobuf cannot hold a message of 2 GiB or more anyway
MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes
MAX_BLOB_DIM = 2**31 - 1  # Caffe keeps each dimension in an int

_F = descriptor_pb2.FieldDescriptorProto


class CaffeModelError(ValueError):
    """A file that is not a readable Caffe model, or not one this project can use; the message says why."""


def _field(msg, name: str, number: int, ftype: int, label: int = _F.LABEL_OPTIONAL, type_name: str = "", packed=False):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if packed:
        f.options.packed = True


def _build_classes(fast: bool) -> dict[str, type]:
    """Message classes in a private pool (never clashes with another caffe.proto the process may load)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"goturn_caffe_subset_{'fast' if fast else 'compat'}.proto",
        package="goturn_caffe",
        syntax="proto2",
    )
    rep = _F.LABEL_REPEATED
    shape = fdp.message_type.add(name="BlobShape")
    _field(shape, "dim", 1, _F.TYPE_INT64, rep, packed=True)

    blob = fdp.message_type.add(name="BlobProto")
    _field(blob, "num", 1, _F.TYPE_INT64)
    _field(blob, "channels", 2, _F.TYPE_INT64)
    _field(blob, "height", 3, _F.TYPE_INT64)
    _field(blob, "width", 4, _F.TYPE_INT64)
    if fast:  # each packed chunk of floats is one element (writers may split a blob's data into several)
        _field(blob, "data", 5, _F.TYPE_BYTES, rep)
        _field(blob, "double_data", 8, _F.TYPE_BYTES, rep)
    else:
        _field(blob, "data", 5, _F.TYPE_FLOAT, rep, packed=True)
        _field(blob, "double_data", 8, _F.TYPE_DOUBLE, rep, packed=True)
    _field(blob, "shape", 7, _F.TYPE_MESSAGE, type_name=".goturn_caffe.BlobShape")

    v0 = fdp.message_type.add(name="V0LayerParameter")
    _field(v0, "name", 1, _F.TYPE_STRING)
    _field(v0, "type", 2, _F.TYPE_STRING)
    _field(v0, "blobs", 50, _F.TYPE_MESSAGE, rep, ".goturn_caffe.BlobProto")

    v1 = fdp.message_type.add(name="V1LayerParameter")
    _field(v1, "layer", 1, _F.TYPE_MESSAGE, type_name=".goturn_caffe.V0LayerParameter")
    _field(v1, "bottom", 2, _F.TYPE_STRING, rep)
    _field(v1, "top", 3, _F.TYPE_STRING, rep)
    _field(v1, "name", 4, _F.TYPE_STRING)
    _field(v1, "type", 5, _F.TYPE_INT32)  # enum LayerType on the wire: a varint
    _field(v1, "blobs", 6, _F.TYPE_MESSAGE, rep, ".goturn_caffe.BlobProto")

    layer = fdp.message_type.add(name="LayerParameter")
    _field(layer, "name", 1, _F.TYPE_STRING)
    _field(layer, "type", 2, _F.TYPE_STRING)
    _field(layer, "bottom", 3, _F.TYPE_STRING, rep)
    _field(layer, "top", 4, _F.TYPE_STRING, rep)
    _field(layer, "blobs", 7, _F.TYPE_MESSAGE, rep, ".goturn_caffe.BlobProto")

    net = fdp.message_type.add(name="NetParameter")
    _field(net, "name", 1, _F.TYPE_STRING)
    _field(net, "layers", 2, _F.TYPE_MESSAGE, rep, ".goturn_caffe.V1LayerParameter")
    _field(net, "input", 3, _F.TYPE_STRING, rep)
    _field(net, "input_dim", 4, _F.TYPE_INT64, rep)
    _field(net, "layer", 100, _F.TYPE_MESSAGE, rep, ".goturn_caffe.LayerParameter")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"goturn_caffe.{m.name}"))
        for m in fdp.message_type
    }


MESSAGES = _build_classes(fast=True)  # message classes (declared with bytes `data`), for writers
_FAST = MESSAGES
_COMPAT = _build_classes(fast=False)
NetParameter = _FAST["NetParameter"]  # exported for writers (tests, exporters)
BlobProto = _FAST["BlobProto"]


@dataclass
class CaffeLayer:
    """One layer's name, type and weight blobs (float32 arrays in the file's own shapes)."""

    name: str
    type: str
    blobs: list[np.ndarray]


def _blob_shape(blob) -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    legacy = (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in legacy) if any(legacy) else ()


def _packed(chunks) -> bytes:
    """A blob's packed float bytes: its chunks joined (one chunk, as Caffe writes it, without a copy)."""
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _blob_array(blob, where: str) -> np.ndarray:
    shape = _blob_shape(blob)
    if any(d < 0 for d in shape):
        raise CaffeModelError(f"{where}: blob declares a negative dimension in shape {shape} (corrupt file?)")
    if any(d > MAX_BLOB_DIM for d in shape):  # with a 0 elsewhere the count check passes; numpy cannot shape it
        raise CaffeModelError(f"{where}: blob declares a dimension over 2^31 in shape {shape} (corrupt file?)")
    if len(shape) > MAX_BLOB_AXES:
        raise CaffeModelError(f"{where}: blob declares {len(shape)} axes, Caffe allows {MAX_BLOB_AXES} (corrupt file?)")
    count = math.prod(shape) if shape else None  # Python ints: no int64 overflow
    arr = None
    data, double_data = _packed(blob.data), _packed(blob.double_data)
    for raw, itemsize in ((data, 4), (double_data, 8)):
        if len(raw) % itemsize:  # np.frombuffer would raise a bare ValueError
            raise CaffeModelError(
                f"{where}: blob holds {len(raw)} bytes of packed data, not a whole number of {itemsize}-byte "
                "floats (truncated or corrupt file?)"
            )
    if data:
        arr = np.frombuffer(data, dtype="<f4")
    elif double_data:
        arr = np.frombuffer(double_data, dtype="<f8").astype(np.float32)
    if arr is None or (count is not None and arr.size != count):
        # Unpacked floats (old writers) do not fit the bytes declaration (protobuf keeps them as unknown fields):
        # re-read this one blob with the field declared as `repeated float`.
        try:
            compat = _COMPAT["BlobProto"].FromString(blob.SerializeToString())
        except DecodeError as e:
            raise CaffeModelError(f"{where}: unreadable blob ({e}; truncated or corrupt file?)") from None
        values = compat.data if len(compat.data) else compat.double_data
        if len(values) or arr is None:
            arr = np.asarray(values, dtype=np.float32)
    if count is None:
        return arr.reshape(-1)
    if arr.size != count:
        raise CaffeModelError(
            f"{where}: blob declares shape {shape} ({count} values) but holds {arr.size} values "
            "(truncated or corrupt file?)"
        )
    return arr.reshape(shape)


def _text(value: str | bytes, path: Path) -> str:
    """A layer name or type; protobuf hands back ``bytes`` when the string is not valid UTF-8 (corrupt file)."""
    if isinstance(value, bytes):
        raise CaffeModelError(f"{path}: layer name or type {value!r} is not valid UTF-8 (corrupt file?)")
    return value


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """Parse a binary ``.caffemodel`` into its layers that carry blobs (V2 ``layer``, V1 ``layers``, V0 inside
    V1).

    Raises `CaffeModelError` for a missing, oversized, empty, truncated or non-Caffe file.
    """
    p = Path(path)
    if not p.is_file():
        raise CaffeModelError(f"{p}: no such file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CaffeModelError(f"{p}: {size} bytes is larger than any Caffe model this project reads (2 GiB limit)")
    if size == 0:
        raise CaffeModelError(f"{p}: empty file")
    raw = p.read_bytes()
    if raw[:4] == b"PK\x03\x04":
        raise CaffeModelError(f"{p}: this is a zip / PyTorch checkpoint, not a binary .caffemodel")
    if raw.lstrip()[:5] in (b"name:", b"input", b"layer"):
        raise CaffeModelError(f"{p}: this looks like a text .prototxt, not a binary .caffemodel")
    try:
        net = NetParameter.FromString(raw)
    except DecodeError as e:
        raise CaffeModelError(
            f"{p}: not a valid binary Caffe model (protobuf could not parse it: {e}); truncated download?"
        ) from None
    del raw
    layers: list[CaffeLayer] = []
    for lp in net.layer:
        if lp.blobs:
            name, ltype = _text(lp.name, p), _text(lp.type, p)
            layers.append(CaffeLayer(name, ltype, [_blob_array(b, f"{p}: layer {name!r}") for b in lp.blobs]))
    for lp in net.layers:
        name, blobs = lp.name, lp.blobs
        if lp.HasField("layer"):  # V0 inside V1
            name = name or lp.layer.name
            blobs = blobs or lp.layer.blobs
        if blobs:
            name = _text(name, p)
            layers.append(CaffeLayer(name, f"V1:{lp.type}", [_blob_array(b, f"{p}: layer {name!r}") for b in blobs]))
    if not layers:
        raise CaffeModelError(f"{p}: parsed, but holds no layer with weights (not a Caffe model, or truncated)")
    return layers


def make_blob(array: np.ndarray) -> Message:
    """A ``BlobProto`` with ``shape`` and packed float32 ``data`` (how current Caffe writes weights)."""
    a = np.ascontiguousarray(array, dtype="<f4")
    blob = BlobProto()
    blob.shape.dim.extend(int(d) for d in a.shape)
    blob.data.append(a.tobytes())
    return blob


def write_caffemodel(path: str | os.PathLike, layers: list[tuple[str, str, list[np.ndarray]]], name: str = "") -> None:
    """Write ``(layer name, layer type, [weight, bias])`` as a V2 ``.caffemodel`` (tests, exports to
    OpenCV)."""
    net = NetParameter(name=name)
    for lname, ltype, blobs in layers:
        lp = net.layer.add(name=lname, type=ltype)
        for b in blobs:
            lp.blobs.append(make_blob(b))
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    tmp.write_bytes(net.SerializeToString())
    os.replace(tmp, path)
