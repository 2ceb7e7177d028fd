"""A small ONNX protobuf reader: ModelProto bytes -> plain Python objects with NumPy tensors.

Why not `onnx.load`: importing the `onnx` package costs more than the whole load budget (0.3 s), and the loader
only needs the wire format. Fields follow onnx/onnx.proto3 (field numbers below); unknown fields are skipped, as
protobuf requires. Anything that does not parse (truncated file, bad lengths, wrong wire types) raises
`ProtoError`; the loader turns it into a ModelLoadError naming the file.

Wire format: every field is a varint key (field_number << 3 | wire_type) followed by a varint (type 0), 8 bytes
(type 1), a varint length and that many bytes (type 2), or 4 bytes (type 5). Repeated scalars may be packed
(one type-2 field holding the concatenated values) or not; both are accepted.
"""
import os
import struct

import numpy as np


class ProtoError(ValueError):
    """The bytes are not a well-formed ONNX protobuf message."""


# ONNX TensorProto.DataType -> NumPy dtype (little-endian, as raw_data is stored)
DTYPES = {
    1: np.dtype("<f4"), 2: np.dtype("u1"), 3: np.dtype("i1"), 4: np.dtype("<u2"), 5: np.dtype("<i2"),
    6: np.dtype("<i4"), 7: np.dtype("<i8"), 9: np.dtype("bool"), 10: np.dtype("<f2"), 11: np.dtype("<f8"),
    12: np.dtype("<u4"), 13: np.dtype("<u8"), 14: np.dtype("<c8"), 15: np.dtype("<c16"),
}
BFLOAT16 = 16
STRING = 8
DTYPE_NAMES = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
               9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 14: "complex64",
               15: "complex128", 16: "bfloat16"}
NP_TO_ONNX = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}

_U64 = 1 << 64
_I64 = 1 << 63


def _varint(buf, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def _fields(buf, pos, end):
    """Yield (field_number, wire_type, value) over buf[pos:end]; value is an int (types 0, 1, 5: raw bits) or
    a (start, stop) span (type 2)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos, end)
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ProtoError(f"field {field}: length {n} runs past the end of its message (truncated file?)")
            v = (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise ProtoError("truncated 32-bit field")
            v = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        elif wt == 1:
            if pos + 8 > end:
                raise ProtoError("truncated 64-bit field")
            v = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        else:
            raise ProtoError(f"field {field}: unsupported wire type {wt} (corrupt file?)")
        yield field, wt, v
    if pos != end:
        raise ProtoError("message overruns its length")


def _signed(v):
    return v - _U64 if v >= _I64 else v


def _str(buf, span):
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtoError(f"invalid UTF-8 in a string field ({e})") from None


def _f32(bits):
    return struct.unpack("<f", bits.to_bytes(4, "little"))[0]


def _packed_varints(buf, span):
    out = []
    pos, end = span
    while pos < end:
        v, pos = _varint(buf, pos, end)
        out.append(_signed(v))
    return out


def _add_ints(out, buf, wt, v):
    if wt == 2:
        out.extend(_packed_varints(buf, v))
    elif wt == 0:
        out.append(_signed(v))
    else:
        raise ProtoError("integer field with a non-varint wire type")


def _add_fixed(out, buf, wt, v, size, fmt):
    if wt == 2:
        s, e = v
        if (e - s) % size:
            raise ProtoError("packed fixed-width field with a partial element")
        out.extend(struct.unpack(f"<{(e - s) // size}{fmt}", bytes(buf[s:e])))
    elif (wt == 5 and size == 4) or (wt == 1 and size == 8):
        out.append(struct.unpack(f"<{fmt}", v.to_bytes(size, "little"))[0])
    else:
        raise ProtoError("fixed-width field with the wrong wire type")


class Tensor:
    """A TensorProto: name, dims, data_type and the decoded NumPy array (`array()`)."""
    __slots__ = ("name", "dims", "data_type", "_raw", "_typed", "external", "buf", "doc")

    def __init__(self):
        self.name, self.dims, self.data_type = "", [], 1
        self._raw, self._typed, self.external, self.buf, self.doc = None, None, None, None, ""

    def array(self, base_dir=None):
        """The tensor as a NumPy array (read-only view of the file bytes where possible)."""
        dims = tuple(self.dims)
        if any(d < 0 for d in dims):
            raise ProtoError(f"tensor {self.name!r}: negative dimension in {list(dims)}")
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        dt = self.data_type
        if dt == STRING:
            vals = self._typed or []
            return np.array([bytes(s) for s in vals], dtype=object).reshape(dims)
        if dt not in DTYPES and dt != BFLOAT16:
            raise ProtoError(f"tensor {self.name!r}: data type {DTYPE_NAMES.get(dt, dt)} is not supported")
        if self.external is not None:
            raw = self._read_external(base_dir, count)
        elif self._raw is not None:
            raw = self.buf[self._raw[0]:self._raw[1]]
        else:
            raw = None
        if raw is not None:
            np_dt = np.dtype("<u2") if dt == BFLOAT16 else DTYPES[dt]
            if len(raw) != count * np_dt.itemsize:
                raise ProtoError(f"tensor {self.name!r}: raw_data holds {len(raw)} bytes, shape {list(dims)} of "
                                 f"{DTYPE_NAMES.get(dt)} needs {count * np_dt.itemsize}")
            a = np.frombuffer(raw, dtype=np_dt, count=count)
        else:
            vals = self._typed if self._typed is not None else []
            if len(vals) != count:
                raise ProtoError(f"tensor {self.name!r}: {len(vals)} values for shape {list(dims)}")
            if dt in (10, BFLOAT16):      # float16 / bfloat16 bits stored in int32_data
                a = np.array(vals, dtype=np.int64).astype(np.uint16)
                if dt == 10:
                    a = a.view(np.float16)
            elif dt in (14, 15):
                a = np.array(vals, dtype=np.float32 if dt == 14 else np.float64).view(DTYPES[dt])
            else:
                a = np.array(vals).astype(DTYPES[dt]) if vals else np.zeros(0, DTYPES[dt])
        if dt == BFLOAT16:
            a = (a.astype(np.uint32) << 16).view(np.float32)
        a = a.reshape(dims)
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "<" and not np.little_endian):
            a = a.astype(a.dtype.newbyteorder("="))
        return a

    def _read_external(self, base_dir, count):
        info = self.external
        loc = info.get("location")
        if not loc:
            raise ProtoError(f"tensor {self.name!r}: external data without a location")
        if os.path.isabs(loc) or ".." in loc.replace("\\", "/").split("/"):
            raise ProtoError(f"tensor {self.name!r}: external data location {loc!r} must be a relative path "
                             f"inside the model's folder")
        path = os.path.join(base_dir or ".", loc)
        if not os.path.isfile(path):
            raise ProtoError(f"tensor {self.name!r}: external data file {path!r} does not exist")
        offset = int(info.get("offset", 0) or 0)
        np_dt = np.dtype("<u2") if self.data_type == BFLOAT16 else DTYPES[self.data_type]
        length = int(info["length"]) if info.get("length") else count * np_dt.itemsize
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read(length)
        if len(raw) != length:
            raise ProtoError(f"tensor {self.name!r}: external data file {path!r} is too short "
                             f"(needs {length} bytes at offset {offset})")
        return raw


class Attribute:
    __slots__ = ("name", "type", "value", "ref_attr_name")


class Node:
    __slots__ = ("name", "op_type", "domain", "inputs", "outputs", "attrs", "overload")

    def __repr__(self):
        return f"<Node {self.op_type} {self.name!r}>"


class ValueInfo:
    """name, elem_type (0 when not a tensor or unknown), shape (list of int | str | None; None = no shape)."""
    __slots__ = ("name", "elem_type", "shape", "kind")


class Graph:
    __slots__ = ("name", "nodes", "initializers", "inputs", "outputs", "value_info", "sparse")


class Function:
    __slots__ = ("name", "domain", "inputs", "outputs", "attributes", "attribute_defaults", "nodes", "opsets")


class ModelProto:
    __slots__ = ("ir_version", "opsets", "producer_name", "producer_version", "graph", "functions", "domain",
                 "model_version")


# ---- message parsers ---------------------------------------------------------------------------------------
def parse_tensor(buf, span):
    t = Tensor()
    t.buf = buf
    typed = None
    ext = None
    location = 0
    for f, wt, v in _fields(buf, *span):
        if f == 1:
            _add_ints(t.dims, buf, wt, v)
        elif f == 2:
            t.data_type = v
        elif f == 8:
            t.name = _str(buf, v)
        elif f == 9:
            t._raw = v
        elif f == 4:
            typed = typed if typed is not None else []
            _add_fixed(typed, buf, wt, v, 4, "f")
        elif f == 10:
            typed = typed if typed is not None else []
            _add_fixed(typed, buf, wt, v, 8, "d")
        elif f in (5, 7):
            typed = typed if typed is not None else []
            _add_ints(typed, buf, wt, v)
        elif f == 11:
            typed = typed if typed is not None else []
            if wt == 2:
                pos, end = v
                while pos < end:
                    x, pos = _varint(buf, pos, end)
                    typed.append(x)
            else:
                typed.append(v)
        elif f == 6:
            typed = typed if typed is not None else []
            typed.append(buf[v[0]:v[1]])
        elif f == 13:
            key = val = ""
            for f2, _, v2 in _fields(buf, *v):
                if f2 == 1:
                    key = _str(buf, v2)
                elif f2 == 2:
                    val = _str(buf, v2)
            ext = ext if ext is not None else {}
            ext[key] = val
        elif f == 14:
            location = v
        elif f == 12:
            t.doc = _str(buf, v)
        elif f == 3:
            raise ProtoError(f"tensor {t.name!r}: segmented tensors are not supported")
    t._typed = typed
    if location == 1:
        t.external = ext or {}
    return t


def _parse_attribute(buf, span):
    a = Attribute()
    a.name, a.type, a.ref_attr_name = "", 0, None
    scalars = {}
    lists = {}
    for f, wt, v in _fields(buf, *span):
        if f == 1:
            a.name = _str(buf, v)
        elif f == 20:
            a.type = v
        elif f == 21:
            a.ref_attr_name = _str(buf, v)
        elif f == 2:
            scalars[2] = _f32(v) if wt == 5 else _f32(0)
        elif f == 3:
            scalars[3] = _signed(v)
        elif f == 4:
            scalars[4] = bytes(buf[v[0]:v[1]])
        elif f == 5:
            scalars[5] = parse_tensor(buf, v)
        elif f == 6:
            scalars[6] = parse_graph(buf, v)
        elif f == 7:
            _add_fixed(lists.setdefault(7, []), buf, wt, v, 4, "f")
        elif f == 8:
            _add_ints(lists.setdefault(8, []), buf, wt, v)
        elif f == 9:
            lists.setdefault(9, []).append(bytes(buf[v[0]:v[1]]))
        elif f == 10:
            lists.setdefault(10, []).append(parse_tensor(buf, v))
        elif f == 11:
            lists.setdefault(11, []).append(parse_graph(buf, v))
    # AttributeProto.AttributeType: FLOAT=1 INT=2 STRING=3 TENSOR=4 GRAPH=5 FLOATS=6 INTS=7 STRINGS=8 TENSORS=9
    # GRAPHS=10; files from IR < 3 may leave `type` unset: infer it from the field that is present.
    by_type = {1: (2, None), 2: (3, None), 3: (4, None), 4: (5, None), 5: (6, None),
               6: (None, 7), 7: (None, 8), 8: (None, 9), 9: (None, 10), 10: (None, 11)}
    if a.type == 0:
        for typ, (sf, lf) in by_type.items():
            if (sf is not None and sf in scalars) or (lf is not None and lf in lists):
                a.type = typ
                break
    if a.type in by_type:
        sf, lf = by_type[a.type]
        if sf is not None:
            a.value = scalars.get(sf, 0.0 if sf == 2 else 0 if sf == 3 else None)
        else:
            a.value = lists.get(lf, [])
    else:
        a.value = None      # sparse tensors, type protos: not used by supported ops
    return a


def parse_node(buf, span):
    n = Node()
    n.name, n.op_type, n.domain, n.inputs, n.outputs, n.attrs, n.overload = "", "", "", [], [], {}, ""
    for f, wt, v in _fields(buf, *span):
        if f == 1:
            n.inputs.append(_str(buf, v))
        elif f == 2:
            n.outputs.append(_str(buf, v))
        elif f == 3:
            n.name = _str(buf, v)
        elif f == 4:
            n.op_type = _str(buf, v)
        elif f == 7:
            n.domain = _str(buf, v)
        elif f == 5:
            a = _parse_attribute(buf, v)
            n.attrs[a.name] = a
        elif f == 8:
            n.overload = _str(buf, v)
    return n


def _parse_value_info(buf, span):
    vi = ValueInfo()
    vi.name, vi.elem_type, vi.shape, vi.kind = "", 0, None, "tensor"
    for f, wt, v in _fields(buf, *span):
        if f == 1:
            vi.name = _str(buf, v)
        elif f == 2:
            for f2, _, v2 in _fields(buf, *v):
                if f2 == 1:        # TypeProto.tensor_type
                    for f3, _, v3 in _fields(buf, *v2):
                        if f3 == 1:
                            vi.elem_type = v3
                        elif f3 == 2:
                            vi.shape = []
                            for f4, _, v4 in _fields(buf, *v3):
                                if f4 == 1:
                                    dim = None
                                    for f5, _, v5 in _fields(buf, *v4):
                                        if f5 == 1:
                                            dim = _signed(v5)
                                        elif f5 == 2:
                                            dim = _str(buf, v5)
                                    vi.shape.append(dim)
                elif f2 in (4, 5, 8, 9):   # sequence, map, sparse tensor, optional
                    vi.kind = {4: "sequence", 5: "map", 8: "sparse_tensor", 9: "optional"}[f2]
    return vi


def parse_graph(buf, span):
    g = Graph()
    g.name, g.nodes, g.initializers, g.inputs, g.outputs, g.value_info, g.sparse = "", [], [], [], [], [], 0
    for f, wt, v in _fields(buf, *span):
        if f == 1:
            g.nodes.append(parse_node(buf, v))
        elif f == 2:
            g.name = _str(buf, v)
        elif f == 5:
            g.initializers.append(parse_tensor(buf, v))
        elif f == 11:
            g.inputs.append(_parse_value_info(buf, v))
        elif f == 12:
            g.outputs.append(_parse_value_info(buf, v))
        elif f == 13:
            g.value_info.append(_parse_value_info(buf, v))
        elif f == 15:
            g.sparse += 1
    return g


def _parse_opset(buf, span):
    domain, version = "", 0
    for f, wt, v in _fields(buf, *span):
        if f == 1:
            domain = _str(buf, v)
        elif f == 2:
            version = _signed(v)
    return domain, version


def _parse_function(buf, span):
    fn = Function()
    fn.name, fn.domain, fn.inputs, fn.outputs, fn.attributes, fn.attribute_defaults = "", "", [], [], [], {}
    fn.nodes, fn.opsets = [], {}
    for f, wt, v in _fields(buf, *span):
        if f == 1:
            fn.name = _str(buf, v)
        elif f == 10:
            fn.domain = _str(buf, v)
        elif f == 4:
            fn.inputs.append(_str(buf, v))
        elif f == 5:
            fn.outputs.append(_str(buf, v))
        elif f == 6:
            fn.attributes.append(_str(buf, v))
        elif f == 11:
            a = _parse_attribute(buf, v)
            fn.attribute_defaults[a.name] = a
        elif f == 7:
            fn.nodes.append(parse_node(buf, v))
        elif f == 9:
            d, ver = _parse_opset(buf, v)
            fn.opsets[d] = ver
    return fn


def parse_model(buf):
    """bytes of a .onnx file -> ModelProto (raises ProtoError)."""
    m = ModelProto()
    m.ir_version, m.opsets, m.producer_name, m.producer_version = 0, {}, "", ""
    m.graph, m.functions, m.domain, m.model_version = None, [], "", 0
    for f, wt, v in _fields(buf, 0, len(buf)):
        if f == 1:
            m.ir_version = _signed(v)
        elif f == 8:
            d, ver = _parse_opset(buf, v)
            m.opsets["" if d == "ai.onnx" else d] = ver
        elif f == 2:
            m.producer_name = _str(buf, v)
        elif f == 3:
            m.producer_version = _str(buf, v)
        elif f == 4:
            m.domain = _str(buf, v)
        elif f == 5:
            m.model_version = _signed(v)
        elif f == 7:
            if wt != 2:
                raise ProtoError("ModelProto.graph has the wrong wire type (not an ONNX file?)")
            m.graph = parse_graph(buf, v)
        elif f == 25:
            m.functions.append(_parse_function(buf, v))
    return m
