"""The Raft wire format: msgpack frames with a strict schema, and no pickle.

pysyncobj's own transport pickles every message; a peer that can put bytes on
the Raft port could then run code.  Our transport (:mod:`.transport`) sends each
message as ``4-byte big-endian length || msgpack map``.  The length is checked
against :data:`MAX_FRAME` before the body is buffered; the body is decoded with
msgpack's size limits and then checked against the schema of its message type
(:data:`SCHEMA`): unknown types, unknown or missing fields and wrong types are
refused, and the connection is dropped.

No pickle on the wire.  pysyncobj stores each log entry's command (and
forwards each proposed command to the leader) as ``type byte || pickle((method
id, args))``.  The sender turns such a command from its own log or queue into
``[0, method id, payload]`` (or ``[1]`` for a no-op) -- :func:`command_to_wire`,
which reads only the node's own data, with an unpickler that can build nothing
but tuples, ints and bytes -- and the receiver rebuilds the bytes by *pickling*
the validated ints and bytes (:func:`command_from_wire`).  Only the two shapes
our replica produces exist on the wire, and nothing received is unpickled.
Membership entries (:mod:`.membership`) travel in ``append_entries`` as
``[2, kind, addr, node_id, cert_sha256]`` (strings, strictly checked) and are
rebuilt the same way; a forwarded command (``apply_command``) is never one.
pysyncobj's large-entry "transmission" path (it pickles an entry and the
follower unpickles it) is refused outright: our commands are far below the
batch size that would trigger it.
"""

from __future__ import annotations

import io
import pickle
import struct

import msgpack

from vault_raft.errors import VaultRaftError
from vault_raft.raft import membership as _members

MAX_FRAME = 1 << 20  # 1 MiB: an append batch (64 KiB) or a snapshot chunk, with room
MAX_ENTRIES = 4096
_LEN = struct.Struct(">I")

_REGULAR, _NO_OP = 0, 1
PING = {"type": "_ping"}  # transport keepalive; never reaches pysyncobj


class FrameError(VaultRaftError):
    """A frame that breaks the wire format; the connection is dropped."""


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bool(v) -> bool:
    return isinstance(v, bool)


def _bytes(v) -> bool:
    return isinstance(v, bytes)


def _wire_command(v) -> bool:
    return isinstance(v, list) and (v == [_NO_OP] or (
        len(v) == 3 and v[0] == _REGULAR and _int(v[1]) and 0 <= v[1] < 2 ** 31
        and _bytes(v[2])))


def _log_command(v) -> bool:
    """A command in a log entry: a regular command, a no-op or a membership change."""
    return _wire_command(v) or _members.valid(v)


def _entries(v) -> bool:
    return isinstance(v, list) and len(v) <= MAX_ENTRIES and all(
        isinstance(e, list) and len(e) == 3 and _log_command(e[0]) and _int(e[1])
        and _int(e[2]) for e in v)


def _serialized(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 3 and _bytes(v[0])
                         and _bool(v[1]) and _bool(v[2]))


# type -> (required fields, optional fields); each field -> predicate
SCHEMA = {
    "request_vote": ({"term": _int, "last_log_index": _int, "last_log_term": _int}, {}),
    "response_vote": ({"term": _int}, {}),
    "pre_vote": ({"term": _int, "last_log_index": _int, "last_log_term": _int}, {}),
    "pre_vote_response": ({"term": _int, "granted": _bool}, {}),
    "timeout_now": ({"term": _int}, {}),
    "append_entries": ({"term": _int, "commit_index": _int},
                       {"prevLogIdx": _int, "prevLogTerm": _int, "entries": _entries,
                        "serialized": _serialized}),
    "next_node_idx": ({"next_node_idx": _int, "reset": _bool, "success": _bool}, {}),
    "apply_command": ({"command": _wire_command}, {"request_id": _int}),
    "apply_command_response": ({"request_id": _int},
                               {"log_idx": _int, "log_term": _int, "error": _int}),
    "_ping": ({}, {}),
}


class _OnlyCallBytes(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            import _codecs
            return _codecs.encode
        raise FrameError(f"log entry pickle refers to {module}.{name}")


def command_to_wire(command: bytes) -> list:
    """A command from this node's own log or queue, as msgpack-able data."""
    if command == bytes([_NO_OP]):
        return [_NO_OP]
    if command[:1] == bytes([_members.MEMBERSHIP]):
        try:
            return _members.parse(command).to_wire()
        except _members.MembershipError as exc:
            raise FrameError(str(exc)) from None
    if len(command) >= 2 and command[0] == _REGULAR:
        try:
            obj = _OnlyCallBytes(io.BytesIO(command[1:])).load()
        except Exception:  # noqa: BLE001 -- not one of ours: refuse below
            obj = None
        if isinstance(obj, tuple) and len(obj) == 2 and _int(obj[0]) and \
                isinstance(obj[1], tuple) and len(obj[1]) == 1 and _bytes(obj[1][0]):
            return [_REGULAR, obj[0], obj[1][0]]
    raise FrameError("a command that is not a single-bytes call of a replicated method")


def command_from_wire(v: list) -> bytes:
    """The command bytes pysyncobj expects, rebuilt from validated wire data."""
    if v == [_NO_OP]:
        return bytes([_NO_OP])
    if v[0] == _members.MEMBERSHIP:
        return _members.entry_bytes(_members.from_wire(v))
    return bytes([_REGULAR]) + pickle.dumps((v[1], (v[2],)), 2)


def encode(message: dict) -> bytes:
    """A frame for ``message`` (the receiver checks the schema; here only the type)."""
    if not isinstance(message, dict) or message.get("type") not in SCHEMA:
        raise FrameError(f"message type {message!r:.40} is not sent on this wire")
    if "transmission" in message:
        raise FrameError("pysyncobj's pickled large-entry transmission is not supported")
    if "entries" in message:
        message = dict(message, entries=[[command_to_wire(c), i, t]
                                         for c, i, t in message["entries"]])
    elif message["type"] == "apply_command":
        command = command_to_wire(message["command"])
        if not _wire_command(command):
            raise FrameError("a membership change is proposed by the leader, never forwarded")
        message = dict(message, command=command)
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"message of {len(body)} bytes exceeds the frame limit")
    return _LEN.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a 4-byte header announces; FrameError if over the limit."""
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME or n == 0:
        raise FrameError(f"frame of {n} bytes announced (limit {MAX_FRAME})")
    return n


def decode(body: bytes) -> dict:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=MAX_FRAME,
                              max_str_len=256, max_array_len=MAX_ENTRIES, max_map_len=16,
                              max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 -- msgpack raises several types
        raise FrameError(f"frame is not msgpack: {exc.__class__.__name__}") from None
    check(msg)
    if "entries" in msg:
        msg["entries"] = [(command_from_wire(c), i, t) for c, i, t in msg["entries"]]
    elif msg["type"] == "apply_command":
        msg["command"] = command_from_wire(msg["command"])
    return msg


def check(msg) -> None:
    if not isinstance(msg, dict):
        raise FrameError("a message is a map")
    kind = msg.get("type")
    if kind not in SCHEMA:
        raise FrameError(f"message type {kind!r} is not allowed")
    required, optional = SCHEMA[kind]
    for k, v in msg.items():
        if k == "type":
            continue
        pred = required.get(k) or optional.get(k)
        if pred is None:
            raise FrameError(f"{kind}: field {k!r} is not allowed")
        if not pred(v):
            raise FrameError(f"{kind}: field {k!r} has the wrong type or shape")
    missing = [k for k in required if k not in msg]
    if missing:
        raise FrameError(f"{kind}: missing {missing}")
