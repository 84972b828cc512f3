"""A result reference as a compute node reports it (`ipfs://<CID>`), checked where it is trusted: the requester
parses it before it records it, and the node that serves a download checks the DAG's root holds only what
publishing makes (bacalhau/ipfs/publish.py) before exporting it."""

from __future__ import annotations

from bacalhau.errors import ProtocolError
from bacalhau.ipfs.dagpb import valid_cid
from bacalhau.ipfs.exporter import BlockGetter, check_name
from bacalhau.ipfs.publish import RESULT_ENTRIES
from bacalhau.ipfs.unixfs import T_DIRECTORY, cid_str, cid_to_bytes

PREFIX = "ipfs://"
MAX_REF = 200


def parse_result_ref(ref: object) -> bytes:
    """The CID of `ipfs://<CID>`; ProtocolError for anything else (whatever a peer sent)."""
    if not isinstance(ref, str) or len(ref) > MAX_REF or not ref.startswith(PREFIX):
        raise ProtocolError(f"a result reference must be ipfs://<CID>, not {str(ref)[:80]!r}")
    text = ref[len(PREFIX):]
    try:
        cid = cid_to_bytes(text)
    except ValueError:
        cid = b""
    if not valid_cid(cid) or cid_str(cid) != text:
        raise ProtocolError(f"a result reference must be ipfs://<CID>, not {ref[:80]!r}")
    return cid


def check_result_root(cid: bytes, blocks: BlockGetter) -> None:
    """The root is a plain directory of at most stdout, stderr, exitCode and outputs, each once."""
    from bacalhau.ipfs.blockstore import codec_of
    from bacalhau.ipfs.dagpb import decode, decode_unixfs

    if codec_of(cid) != 0x70:
        raise ProtocolError(f"result {cid_str(cid)} is not a directory")
    data, links = decode(blocks.get(cid))
    if decode_unixfs(data).type != T_DIRECTORY:
        raise ProtocolError(f"result {cid_str(cid)} is not a plain directory")
    names = [link.name for link in links]
    for name in names:
        check_name(name, cid)
    unexpected = sorted(set(names) - set(RESULT_ENTRIES))
    if unexpected or len(names) != len(set(names)):
        raise ProtocolError(f"result {cid_str(cid)} holds entries a result does not have: "
                            f"{unexpected or sorted(n for n in names if names.count(n) > 1)}")
