"""Decoding dag-pb nodes and their UnixFS data (the encoder lives in unixfs.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bacalhau.errors import ProtocolError


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf):
            raise ProtocolError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            out.append((num, value))
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > len(buf):
                raise ProtocolError("truncated field")
            out.append((num, buf[i:i + length]))
            i += length
        else:
            raise ProtocolError(f"unsupported protobuf wire type {wire}")
    return out


@dataclass
class PBLink:
    cid: bytes
    name: str
    tsize: int


@dataclass
class UnixFS:
    type: int
    data: bytes = b""
    filesize: int | None = None
    blocksizes: list[int] = field(default_factory=list)


def decode_links(block: bytes) -> list[PBLink]:
    return decode(block)[1]


def decode(block: bytes) -> tuple[bytes, list[PBLink]]:
    data, links = b"", []
    for num, value in _fields(block):
        if num == 1 and isinstance(value, bytes):
            data = value
        elif num == 2 and isinstance(value, bytes):
            cid, name, tsize = b"", "", 0
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    cid = v
                elif n == 2 and isinstance(v, bytes):
                    name = v.decode("utf-8", "surrogateescape")   # the exporter refuses such a name by name
                elif n == 3 and isinstance(v, int):
                    tsize = v
            if not valid_cid(cid):
                raise ProtocolError(f"a dag-pb link to no valid CID ({cid[:40].hex() or 'empty'})")
            links.append(PBLink(cid, name, tsize))
    return data, links


def valid_cid(cid: bytes) -> bool:
    """A sha2-256 CIDv0 or CIDv1 (what every block store here keys by)."""
    if len(cid) == 34:
        return cid[:2] == b"\x12\x20"
    if len(cid) < 36 or cid[0] != 1:
        return False
    _, i = _varint(cid, 1)
    return cid[i:i + 2] == b"\x12\x20" and len(cid) == i + 34


def decode_unixfs(data: bytes) -> UnixFS:
    node = UnixFS(type=-1)
    for num, value in _fields(data):
        if num == 1 and isinstance(value, int):
            node.type = value
        elif num == 2 and isinstance(value, bytes):
            node.data = value
        elif num == 3 and isinstance(value, int):
            node.filesize = value
        elif num == 4 and isinstance(value, int):
            node.blocksizes.append(value)
    if node.type < 0:
        raise ProtocolError("UnixFS data without a type")
    return node
