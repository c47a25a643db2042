"""Generated input to every method of the real server: it must answer everything and stay consistent.

Thousands of payloads go as raw bytes through generic gRPC calls to all 13
methods: purely random bytes, hostile but well-formed messages (huge shapes,
NaN strings, 10,000-deep JSON, big metadata maps, empty, overlong and
control-character ids, invalid UTF-8) and mutations of valid requests (bit
flips, truncation, splicing, field-number and varint tampering, huge length
prefixes, mutations inside nested messages), against a session holding one
variable of each of the 8 types.

Every call must end with a gRPC status (any code): never a hang past its
deadline, never UNAVAILABLE from a dead server. Afterwards the server is
alive, answers Ping, and the store's invariants hold.

The run is seeded: ``SNAKEPIT_FUZZ_SEED=<n>`` replays a run; the seed is in
every failure message.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from _support import ServerProcess, is_repeated_field, start_server
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc
from snakepit_bridge.values import decode_variable_value

C = grpc.StatusCode
SERVICE = "/snakepit.bridge.BridgeService/"
TYPE_PREFIX = "type.googleapis.com/snakepit."
TOTAL_CALLS = 3000
UNARY_DEADLINE = 10.0  # generous: a liveness check, never a speed claim
WATCH_DEADLINE = 0.25  # a watch that is still streaming is cancelled by its deadline
HANG_SLACK = 5.0  # a call returning this long after its deadline counts as a hang
WORKERS = 12
MAX_GROWTH = 1024 * 1024  # bytes one mutation may add by repetition
MAX_PAYLOAD = 5 * 1024 * 1024  # a little over the server's 4 MiB message limit
RSS_BOUND_MIB = 300
SESSION = "fuzz-main"
SCRATCH_SESSIONS = [f"fuzz-scratch-{i}" for i in range(4)]
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
SERVER_FLAGS = (
    "--max-sessions",
    "200",
    "--max-variables-per-session",
    "200",
    "--max-value-bytes",
    "65536",
    "--max-watchers-per-connection",
    "256",
    "--max-batch",
    "256",
)

# name -> (request class, server streaming?)
METHODS: dict[str, tuple[type[Message], bool]] = {
    "Ping": (pb2.PingRequest, False),
    "InitializeSession": (pb2.InitializeSessionRequest, False),
    "CleanupSession": (pb2.CleanupSessionRequest, False),
    "GetSession": (pb2.GetSessionRequest, False),
    "Heartbeat": (pb2.HeartbeatRequest, False),
    "GetVariable": (pb2.GetVariableRequest, False),
    "SetVariable": (pb2.SetVariableRequest, False),
    "GetVariables": (pb2.BatchGetVariablesRequest, False),
    "SetVariables": (pb2.BatchSetVariablesRequest, False),
    "RegisterVariable": (pb2.RegisterVariableRequest, False),
    "ListVariables": (pb2.ListVariablesRequest, False),
    "DeleteVariable": (pb2.DeleteVariableRequest, False),
    "WatchVariables": (pb2.WatchVariablesRequest, True),
}

# name -> (type, initial value, constraints, another valid value)
VARIABLES: dict[str, tuple[str, Any, dict[str, Any] | None, Any]] = {
    "f": ("float", 0.5, {"min": -10.0, "max": 10.0}, 1.25),
    "i": ("integer", 3, {"min": -100, "max": 100}, -7),
    "s": ("string", "hello", {"max_length": 100}, "wörld \u2603"),
    "b": ("boolean", True, None, False),
    "c": ("choice", "red", {"choices": ["red", "green", "blue"]}, "blue"),
    "m": ("module", "Predict", {"allowed_modules": ["Predict", "ChainOfThought"]}, "ChainOfThought"),
    "e": ("embedding", [0.1, 0.2, 0.3], {"dimensions": 3}, [1.0, -1.0, 0.0]),
    "t": (
        "tensor",
        {"shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]},
        {"shape": [2, 2]},
        {"shape": [2, 2], "data": [0, 0, 0, 1]},
    ),
}
TYPES = sorted({t for t, _, _, _ in VARIABLES.values()})


def seed_of_run() -> int:
    configured = os.environ.get("SNAKEPIT_FUZZ_SEED")
    return int(configured) if configured else random.SystemRandom().randrange(2**32)


# --------------------------------------------------------------------------- building requests


def any_of(var_type: str, value: Any, binary: bool = False) -> any_pb2.Any:
    payload = value if isinstance(value, bytes) else json.dumps(value).encode()
    return any_pb2.Any(type_url=f"{TYPE_PREFIX}{var_type}{'.binary' if binary else ''}", value=payload)


def valid_requests(ids: dict[str, str]) -> dict[str, list[bytes]]:
    """Well-formed requests for every method against SESSION (and scratch sessions and variables)."""
    names = list(VARIABLES)
    now = timestamp_pb2.Timestamp(seconds=int(time.time()))
    out: dict[str, list[Message]] = {m: [] for m in METHODS}
    out["Ping"] += [pb2.PingRequest(message="hi"), pb2.PingRequest()]
    out["InitializeSession"] += [
        pb2.InitializeSessionRequest(
            session_id=s, metadata={"k": "v"}, config=pb2.SessionConfig(enable_caching=True, cache_ttl_seconds=5)
        )
        for s in SCRATCH_SESSIONS
    ]
    out["CleanupSession"] += [
        pb2.CleanupSessionRequest(session_id=s, force=f) for s in SCRATCH_SESSIONS for f in (True, False)
    ]
    out["GetSession"] += [pb2.GetSessionRequest(session_id=s) for s in [SESSION, *SCRATCH_SESSIONS]]
    out["Heartbeat"] += [
        pb2.HeartbeatRequest(session_id=SESSION, client_time=now),
        pb2.HeartbeatRequest(session_id=SCRATCH_SESSIONS[0]),
    ]
    for name, (var_type, initial, constraints, other) in VARIABLES.items():
        out["GetVariable"] += [
            pb2.GetVariableRequest(session_id=SESSION, variable_identifier=name),
            pb2.GetVariableRequest(session_id=SESSION, variable_identifier=ids[name], bypass_cache=True),
        ]
        out["SetVariable"] += [
            pb2.SetVariableRequest(
                session_id=SESSION, variable_identifier=name, value=any_of(var_type, other), metadata={"by": "fuzz"}
            ),
            pb2.SetVariableRequest(
                session_id=SESSION, variable_identifier=ids[name], value=any_of(var_type, initial), expected_version=1
            ),
        ]
        out["RegisterVariable"].append(
            pb2.RegisterVariableRequest(
                session_id=SESSION,
                name=f"fz_{name}",
                type=var_type,
                initial_value=any_of(var_type, initial),
                constraints_json=json.dumps(constraints) if constraints else "",
                metadata={"origin": "fuzz"},
            )
        )
        out["DeleteVariable"].append(pb2.DeleteVariableRequest(session_id=SESSION, variable_identifier=f"fz_{name}"))
    # The binary path for the numeric arrays.
    out["SetVariable"] += [
        pb2.SetVariableRequest(
            session_id=SESSION,
            variable_identifier="e",
            value=any_of("embedding", {"shape": [3], "dtype": "float64", "binary_format": "raw_le"}, binary=True),
            binary_value=b"\0" * 24,
        ),
        pb2.SetVariableRequest(
            session_id=SESSION,
            variable_identifier="t",
            value=any_of("tensor", {"shape": [2, 2], "dtype": "float32"}, binary=True),
            binary_value=b"\0" * 16,
        ),
    ]
    out["GetVariables"] += [
        pb2.BatchGetVariablesRequest(session_id=SESSION, variable_identifiers=names, include_metadata=True),
        pb2.BatchGetVariablesRequest(session_id=SESSION, variable_identifiers=[*names, "missing"], values_only=True),
        pb2.BatchGetVariablesRequest(session_id=SESSION, variable_identifiers=[ids["f"], "t"], bypass_cache=True),
    ]
    out["SetVariables"] += [
        pb2.BatchSetVariablesRequest(
            session_id=SESSION,
            updates={n: any_of(VARIABLES[n][0], VARIABLES[n][3]) for n in names},
            metadata={"batch": "1"},
            atomic=True,
        ),
        pb2.BatchSetVariablesRequest(
            session_id=SESSION,
            value_identifiers=["i", "s", "c"],
            values_json=b'[5,"x","green"]',
            float_identifiers=["f"],
            float_values=[2.5],
            atomic=False,
        ),
        pb2.BatchSetVariablesRequest(
            session_id=SESSION,
            updates={"e": any_of("embedding", {"shape": [3], "dtype": "float64"}, binary=True)},
            binary_updates={"e": b"\0" * 24},
            value_identifiers=["t"],
            values_json=b'[{"shape":[2,2],"data":[1,1,1,1]}]',
        ),
    ]
    out["ListVariables"] += [
        pb2.ListVariablesRequest(session_id=SESSION, pattern=p) for p in ("", "*", "?", "f*", "fz_*", "[")
    ]
    out["WatchVariables"] += [
        pb2.WatchVariablesRequest(session_id=SESSION, variable_identifiers=names, include_initial_values=True),
        pb2.WatchVariablesRequest(
            session_id=SESSION, variable_identifiers=["f", ids["t"]], since_versions={"f": 1, ids["t"]: 2}
        ),
        pb2.WatchVariablesRequest(session_id=SESSION, variable_identifiers=["s"]),
    ]
    return {m: [r.SerializeToString() for r in reqs] for m, reqs in out.items()}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HOSTILE_IDS = [
    "",
    "x" * 20_000,
    "\x00\x01\x02\x7f\n\r\t",
    "\u202e\ufeff\U0001f642" * 500,
    "../../etc/passwd",
    "*",
    "?" * 300,
    "var_f_0",
    " f",
    "f ",
    "F",
]
HOSTILE_JSON = [
    b'{"shape":[1099511627776],"data":[]}',
    b'{"shape":[4294967296,4294967296,4294967296],"data":[]}',
    b'{"shape":[-1],"data":[]}',
    b'{"shape":[1.5],"data":[1]}',
    b'{"shape":[],"data":[]}',
    b'{"shape":null}',
    b'"NaN"',
    b'"Infinity"',
    b'"-Infinity"',
    b'"nan"',
    b"NaN",
    b"Infinity",
    b'["NaN","NaN","NaN"]',
    b'{"shape":[1],"data":["NaN"]}',
    _nested(10_000),
    b"[" * 10_000,
    b'{"a":' * 10_000,
    b"1e400",
    b"-9223372036854775809",
    b"9223372036854775808",
    b"1" * 5000,
    b'"' + b"\\u0000" * 1000 + b'"',
    b'"\\ud800"',
    b"\xff\xfe",
    b"",
    b"null",
    b"[]",
    b"{}",
    b"true",
    b'"red"',
    b"0.1e-99999",
    b"-0",
    b'"' + b"a" * 70_000 + b'"',
]


def hostile_requests(ids: dict[str, str], rng: random.Random) -> dict[str, list[bytes]]:
    """Well-formed messages with hostile contents."""
    out: dict[str, list[Message]] = {m: [] for m in METHODS}
    big_meta = {f"key-{i}": "v" * 100 for i in range(300)}  # over 256 entries
    odd_meta = {"": "", "\x00": "\x7f", "k" * 70_000: "v"}
    for sid in HOSTILE_IDS[:4] + [SESSION]:
        out["InitializeSession"].append(
            pb2.InitializeSessionRequest(session_id=sid if sid != SESSION else "fuzz-hostile", metadata=big_meta)
        )
        out["GetSession"].append(pb2.GetSessionRequest(session_id=sid))
        out["Heartbeat"].append(
            pb2.HeartbeatRequest(session_id=sid, client_time=timestamp_pb2.Timestamp(seconds=-(2**62), nanos=-5))
        )
        out["CleanupSession"].append(
            pb2.CleanupSessionRequest(session_id=sid if sid != SESSION else "fuzz-hostile", force=True)
        )
        out["Ping"].append(pb2.PingRequest(message=sid))
    out["InitializeSession"].append(pb2.InitializeSessionRequest(session_id="fuzz-odd-meta", metadata=odd_meta))
    for ident in HOSTILE_IDS:
        out["GetVariable"].append(pb2.GetVariableRequest(session_id=SESSION, variable_identifier=ident))
        out["DeleteVariable"].append(pb2.DeleteVariableRequest(session_id=SESSION, variable_identifier=ident))
        out["ListVariables"].append(pb2.ListVariablesRequest(session_id=SESSION, pattern=ident))
        out["WatchVariables"].append(
            pb2.WatchVariablesRequest(session_id=SESSION, variable_identifiers=[ident, "f"], since_versions={ident: -1})
        )
        out["RegisterVariable"].append(
            pb2.RegisterVariableRequest(
                session_id=SESSION, name=ident, type="integer", initial_value=any_of("integer", 1)
            )
        )
    for raw in HOSTILE_JSON:
        name = rng.choice(list(VARIABLES))
        var_type = VARIABLES[name][0]
        claimed = rng.choice([var_type, rng.choice(TYPES), "quaternion", ""])
        out["SetVariable"].append(
            pb2.SetVariableRequest(
                session_id=SESSION,
                variable_identifier=name,
                value=any_of(claimed, raw),
                expected_version=rng.choice([0, 0, -1, 2**63 - 1, 1]),
            )
        )
        out["RegisterVariable"].append(
            pb2.RegisterVariableRequest(
                session_id=SESSION,
                name=f"fzh_{rng.randrange(50)}",
                type=claimed,
                initial_value=any_of(claimed, raw),
                constraints_json=rng.choice(["", raw.decode("latin-1")]),
            )
        )
        out["SetVariables"].append(
            pb2.BatchSetVariablesRequest(
                session_id=SESSION, value_identifiers=[name], values_json=b"[" + raw + b"]", atomic=rng.random() < 0.5
            )
        )
        out["SetVariables"].append(
            pb2.BatchSetVariablesRequest(session_id=SESSION, updates={name: any_of(claimed, raw)}, metadata=big_meta)
        )
    nan = float("nan")
    out["SetVariables"] += [
        pb2.BatchSetVariablesRequest(
            session_id=SESSION, float_identifiers=["f", "i", "s"], float_values=[nan, math.inf, -0.0]
        ),
        pb2.BatchSetVariablesRequest(session_id=SESSION, float_identifiers=["f", "f"], float_values=[1.0, 2.0]),
        pb2.BatchSetVariablesRequest(session_id=SESSION, float_identifiers=["f"], float_values=[]),
        pb2.BatchSetVariablesRequest(session_id=SESSION, value_identifiers=["i", "s"], values_json=b"[1]"),
        pb2.BatchSetVariablesRequest(session_id=SESSION, value_identifiers=[], values_json=_nested(10_000)),
        pb2.BatchSetVariablesRequest(session_id=SESSION, binary_updates={"e": b"\1" * 24, "nope": b"x"}),
        pb2.BatchSetVariablesRequest(session_id=SESSION, updates={i: any_of("integer", 1) for i in HOSTILE_IDS}),
    ]
    for var_type in ("embedding", "tensor"):
        for meta, data in (
            ({"shape": [1099511627776], "dtype": "float64"}, b""),
            ({"shape": [3], "dtype": "float16"}, b"\0" * 6),
            ({"shape": [3], "dtype": "float64", "binary_format": "raw_be"}, b"\0" * 24),
            ({"shape": [3], "dtype": "float64"}, b"\0" * 23),
            ({"dtype": "float64"}, b"\0" * 8),
            ({"shape": [2, 2], "dtype": "float64"}, b"\xff" * 32),  # NaN payloads
        ):
            out["SetVariable"].append(
                pb2.SetVariableRequest(
                    session_id=SESSION,
                    variable_identifier="t" if var_type == "tensor" else "e",
                    value=any_of(var_type, meta, binary=True),
                    binary_value=data,
                )
            )
            out["RegisterVariable"].append(
                pb2.RegisterVariableRequest(
                    session_id=SESSION,
                    name=f"fzb_{var_type}",
                    type=var_type,
                    initial_value=any_of(var_type, meta, binary=True),
                    initial_binary_value=data,
                )
            )
    out["SetVariable"] += [
        pb2.SetVariableRequest(session_id=SESSION, variable_identifier="f", value=any_pb2.Any(type_url="", value=b"1")),
        pb2.SetVariableRequest(session_id=SESSION, variable_identifier="f"),
        pb2.SetVariableRequest(
            session_id=SESSION, variable_identifier="f", value=any_of("float", 1.0), binary_value=b"\0" * 8
        ),
        pb2.SetVariableRequest(
            session_id=SESSION, variable_identifier="s", value=any_of("string", "x"), metadata=big_meta
        ),
        pb2.SetVariableRequest(
            session_id=SESSION, variable_identifier="s", value=any_of("string", "x"), metadata=odd_meta
        ),
    ]
    out["RegisterVariable"] += [
        pb2.RegisterVariableRequest(
            session_id=SESSION, name="fzc", type="string", initial_value=any_of("string", "a"), constraints_json=c
        )
        for c in (
            '{"pattern":"(?:a{1000}){1000}"}',
            '{"pattern":"' + "(a|b)*" * 2000 + '"}',
            '{"pattern":"["}',
            _nested(10_000).decode(),
            '{"min_length":18446744073709551615}',
            '{"min_length":5,"max_length":1}',
            '{"enum":[' + ",".join(['"a"'] * 20_000) + "]}",
        )
    ]
    out["RegisterVariable"] += [
        pb2.RegisterVariableRequest(
            session_id=SESSION,
            name="fzt",
            type="tensor",
            initial_value=any_of("tensor", {"shape": [1], "data": [0]}),
            constraints_json=json.dumps({"shape": s}),
        )
        for s in ([1099511627776], [4294967296, 4294967296, 4294967296], [-1], "x")
    ]
    out["GetVariables"] += [
        pb2.BatchGetVariablesRequest(session_id=SESSION, variable_identifiers=HOSTILE_IDS, values_only=True),
        pb2.BatchGetVariablesRequest(session_id=SESSION, variable_identifiers=["f"] * 256),
        pb2.BatchGetVariablesRequest(session_id=SESSION, variable_identifiers=[f"v{i}" for i in range(5000)]),
    ]
    out["WatchVariables"] += [
        pb2.WatchVariablesRequest(session_id=SESSION, variable_identifiers=["f"] * 200, include_initial_values=True),
        pb2.WatchVariablesRequest(session_id=SESSION, variable_identifiers=[]),
        pb2.WatchVariablesRequest(
            session_id=SESSION, variable_identifiers=["f"], since_versions={"f": 2**63 - 1, "": -(2**63)}
        ),
    ]
    return {m: [r.SerializeToString() for r in reqs] for m, reqs in out.items()}


# --------------------------------------------------------------------------- protobuf wire tampering


def encode_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


@dataclass
class Field:
    number: int
    wire_type: int
    payload: bytes  # a varint's value as bytes for types 0, the raw contents otherwise


def parse_fields(buf: bytes) -> list[Field]:
    """Top-level fields of a protobuf message; raises ValueError on anything malformed."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field 0")
        if wire_type == 0:
            start = pos
            _, pos = read_varint(buf, pos)
            fields.append(Field(number, 0, buf[start:pos]))
        elif wire_type == 1:
            fields.append(Field(number, 1, buf[pos : pos + 8]))
            pos += 8
        elif wire_type == 2:
            length, pos = read_varint(buf, pos)
            fields.append(Field(number, 2, buf[pos : pos + length]))
            pos += length
        elif wire_type == 5:
            fields.append(Field(number, 5, buf[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError("group or bad wire type")
        if pos > len(buf):
            raise ValueError("truncated")
    return fields


def encode_fields(fields: list[Field], retag: tuple[Field, int] | None = None) -> bytes:
    """The fields back as bytes; ``retag`` gives one field a different wire type in its tag only."""
    out = bytearray()
    for f in fields:
        wire_type = retag[1] if retag is not None and retag[0] is f else f.wire_type
        out += encode_varint((f.number << 3) | wire_type)
        if f.wire_type == 2:
            out += encode_varint(len(f.payload))
        out += f.payload
    return bytes(out)


def _random_bytes(rng: random.Random, most: int = 512) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 2, rng.randrange(most + 1)]))


def mutate(data: bytes, rng: random.Random, donors: list[bytes], depth: int = 0) -> bytes:
    """One mutation of ``data``; nested messages are mutated in place with their length fixed up."""
    kind = rng.randrange(12)
    if kind == 0 and data:  # bit flips
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == 1:  # truncation
        return data[: rng.randrange(len(data) + 1)]
    if kind == 2:  # splicing with another request
        other = rng.choice(donors)
        return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    if kind == 3:  # random bytes inserted, or a range deleted or duplicated
        i, j = sorted(rng.randrange(len(data) + 1) for _ in range(2))
        choice = rng.randrange(3)
        if choice == 0:
            return data[:i] + _random_bytes(rng, 64) + data[i:]
        if choice == 1:
            return data[:i] + data[j:]
        times = max(1, min(rng.randint(1, 50), MAX_GROWTH // max(1, j - i)))
        return data[:j] + data[i:j] * times + data[j:]
    if kind == 4:  # a huge length prefix, with little or nothing behind it
        number = rng.choice([1, 2, 3, 4, 5, 6, 7, 12, 100, 101])
        length = rng.choice([2**31, 2**32 - 1, 2**62, 2**64 - 1, 1 << 28, 5_000_000])
        return data + encode_varint((number << 3) | 2) + encode_varint(length) + _random_bytes(rng, 16)
    try:
        fields = parse_fields(data)
    except ValueError:
        return data + _random_bytes(rng, 32)
    if not fields:
        return encode_varint((rng.randint(1, 200) << 3) | rng.choice([0, 1, 2, 5])) + _random_bytes(rng, 16)
    field = rng.choice(fields)
    if kind == 5:  # field-number tampering
        field.number = rng.choice([rng.randint(1, 12), rng.randint(100, 110), 2**29 - 1, rng.randint(13, 99)])
    elif kind == 6:  # wire-type tampering (the payload stays: the rest desynchronises)
        return encode_fields(fields, retag=(field, rng.choice([0, 1, 2, 3, 4, 5, 6, 7])))
    elif kind == 7:  # varint tampering: overlong, extreme or negative values
        if field.wire_type == 0:
            field.payload = rng.choice(
                [
                    b"\xff" * 9 + b"\x01",
                    b"\xff" * 10 + b"\x01",
                    b"\x80" * 9 + b"\x00",
                    encode_varint(2**63),
                    encode_varint(2**64 - 1),
                    encode_varint(rng.getrandbits(64)),
                    encode_varint(2**31),
                    b"\x80",
                ]
            )
        else:
            field.payload = field.payload + field.payload
    elif kind == 8 and field.wire_type == 2 and depth < 3:  # mutate inside a nested message or string
        field.payload = mutate(field.payload, rng, donors, depth + 1)
    elif kind == 9:  # repeat a field many times
        fields += [field] * max(1, min(rng.choice([2, 10, 1000]), MAX_GROWTH // (len(field.payload) + 1)))
    elif kind == 10:  # drop a field or swap two
        if rng.random() < 0.5:
            fields.remove(field)
        else:
            rng.shuffle(fields)
    elif field.wire_type == 2:  # replace a string with something nasty
        field.payload = rng.choice(
            [
                b"",
                b"\xff\xfe\xfd",
                b"\xed\xa0\x80",
                b"\x00" * 100,
                "\u202e".encode() * 50,
                b"x" * rng.choice([255, 256, 257, 70_000]),
                _nested(2_000),
                b'"NaN"',
                rng.randbytes(rng.randrange(64)),
            ]
        )
    return encode_fields(fields)


def generate(
    rng: random.Random,
    valid: dict[str, list[bytes]],
    hostile: dict[str, list[bytes]],
    total: int,
    strings: list[str],
) -> list[tuple[str, bytes]]:
    """``total`` (method, payload) pairs spread over every method: every hostile message once, then
    about 12% random bytes, 40% well-formed tampered requests and the rest byte-level mutations."""
    donors = [p for payloads in (*valid.values(), *hostile.values()) for p in payloads]
    out: list[tuple[str, bytes]] = []
    methods = list(METHODS)
    for method in methods:  # every hostile message once, as it is
        out += [(method, p) for p in hostile[method]]
    while len(out) < total:
        method = methods[len(out) % len(methods)]
        roll = rng.random()
        if roll < 0.12:
            payload = _random_bytes(rng, 2048)
        elif roll < 0.52:
            base = rng.choice(valid[method] + hostile[method][:3])
            payload = tamper(method, base, rng, strings) or base
        else:
            bases = valid[method] + (hostile[method] if roll < 0.65 else [])
            payload = rng.choice(bases)
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                payload = mutate(payload, rng, donors)
                if len(payload) > MAX_PAYLOAD:  # over the server's message limit, but bounded here
                    payload = payload[:MAX_PAYLOAD]
        if method == "CleanupSession" and _cleans_up_main(payload):
            continue  # the invariants are checked on SESSION: it must survive
        out.append((method, payload))
    rng.shuffle(out)
    return out


def _cleans_up_main(payload: bytes) -> bool:
    try:
        return pb2.CleanupSessionRequest.FromString(payload).session_id == SESSION
    except Exception:  # noqa: BLE001 - anything unparsable here is unparsable there too
        return False


# --------------------------------------------------------------------------- message-level tampering

_INT_EXTREMES = [0, 1, -1, 2, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
_DOUBLES = [float("nan"), math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 1e300, 0.5]


def _string_pool(ids: dict[str, str]) -> list[str]:
    return [
        *HOSTILE_IDS,
        *VARIABLES,
        *ids.values(),
        SESSION,
        *SCRATCH_SESSIONS,
        "fz_f",
        *(TYPES + ["quaternion", "Float", "float "]),
        *(f"{TYPE_PREFIX}{t}" for t in TYPES),
        *(f"{TYPE_PREFIX}{t}.binary" for t in TYPES),
        "*a" * 511 + "b",
        json.dumps({"pattern": "(a+)+$"}),
        json.dumps({"min": 5, "max": 1}),
        json.dumps({"shape": [1099511627776]}),
        json.dumps({"dimensions": 2**62}),
        "NaN",
    ]


def _pick_value(field: Any, rng: random.Random, strings: list[str]) -> Any:
    """A hostile value for a scalar field of the given descriptor."""
    fd = field
    if fd.type == fd.TYPE_STRING:
        return (
            rng.choice(strings) if rng.random() < 0.85 else "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(8))
        )
    if fd.type == fd.TYPE_BYTES:
        return rng.choice(HOSTILE_JSON) if rng.random() < 0.8 else rng.randbytes(rng.randrange(64))
    if fd.type == fd.TYPE_BOOL:
        return rng.random() < 0.5
    if fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
        return rng.choice(_DOUBLES)
    if fd.type in (fd.TYPE_INT64, fd.TYPE_SINT64, fd.TYPE_SFIXED64):
        return rng.choice(_INT_EXTREMES)
    if fd.type in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32, fd.TYPE_ENUM):
        return rng.choice([v for v in _INT_EXTREMES if -(2**31) <= v < 2**31])
    return None


def _tamper(msg: Message, rng: random.Random, strings: list[str], depth: int = 0) -> None:
    """Sets one field of ``msg`` (or of a message inside it) to a hostile but well-formed value."""
    fields = msg.DESCRIPTOR.fields
    fd = rng.choice(fields)
    container = getattr(msg, fd.name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        if rng.random() < 0.2:
            container.clear()
            return
        for _ in range(rng.choice([1, 1, 3, 300])):
            key = _pick_value(key_fd, rng, strings)
            if value_fd.message_type is not None:
                _tamper(container[key], rng, strings, depth + 1)
            else:
                container[key] = _pick_value(value_fd, rng, strings)
        return
    if is_repeated_field(fd):
        if rng.random() < 0.2:
            del container[:]
        elif fd.message_type is None:
            for _ in range(rng.choice([1, 2, 5, 257])):
                container.append(_pick_value(fd, rng, strings))
        return
    if fd.message_type is not None:
        if depth < 3:
            _tamper(container, rng, strings, depth + 1)
        return
    setattr(msg, fd.name, _pick_value(fd, rng, strings))


def tamper(method: str, payload: bytes, rng: random.Random, strings: list[str]) -> bytes | None:
    """``payload`` parsed as the method's request, one to three fields tampered, serialized again
    (None if it does not parse)."""
    try:
        msg = METHODS[method][0].FromString(payload)
    except Exception:  # noqa: BLE001 - not a message of this type: the byte mutators take it
        return None
    for _ in range(rng.choice([1, 1, 2, 3])):
        _tamper(msg, rng, strings)
    return msg.SerializeToString()


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    method: str
    size: int
    payload: bytes  # its first 200 bytes
    code: grpc.StatusCode
    details: str
    elapsed: float
    deadline: float


def call_raw(channel: grpc.Channel, method: str, payload: bytes) -> Outcome:
    """One generic call with raw bytes; returns how it ended (never raises for a gRPC status)."""
    streaming = METHODS[method][1]
    deadline = WATCH_DEADLINE if streaming else UNARY_DEADLINE
    start = time.monotonic()
    try:
        if streaming:
            call = channel.unary_stream(SERVICE + method, request_serializer=None, response_deserializer=None)(
                payload, timeout=deadline
            )
            for _ in call:
                pass
        else:
            channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)(
                payload, timeout=deadline
            )
        code, details = C.OK, ""
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    return Outcome(method, len(payload), payload[:200], code, details, time.monotonic() - start, deadline)


def rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match
    return int(match.group(1)) / 1024


def _no_bare_constants(name: str) -> Any:
    raise ValueError(f"bare {name} in JSON")


def strict_json(raw: bytes) -> Any:
    """JSON as the wire promises it: NaN and the infinities only as strings."""
    return json.loads(raw, parse_constant=_no_bare_constants)


@pytest.fixture
def fuzz_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path, *SERVER_FLAGS)
    yield server
    server.terminate()


def setup_store(stub: Any) -> dict[str, str]:
    """SESSION with one variable of each type; returns name -> id."""
    stub.InitializeSession(pb2.InitializeSessionRequest(session_id=SESSION), timeout=UNARY_DEADLINE)
    ids = {}
    for name, (var_type, initial, constraints, _) in VARIABLES.items():
        response = stub.RegisterVariable(
            pb2.RegisterVariableRequest(
                session_id=SESSION,
                name=name,
                type=var_type,
                initial_value=any_of(var_type, initial),
                constraints_json=json.dumps(constraints) if constraints else "",
            ),
            timeout=UNARY_DEADLINE,
        )
        assert response.success, response.error_message
        ids[name] = response.variable_id
    return ids


def check_invariants(stub: Any, session_id: str, seed: int) -> int:
    """Every listed variable reads back alike through GetVariable, GetVariables and a watch; returns the count."""
    listed = list(stub.ListVariables(pb2.ListVariablesRequest(session_id=session_id), timeout=UNARY_DEADLINE).variables)
    info = stub.GetSession(pb2.GetSessionRequest(session_id=session_id), timeout=UNARY_DEADLINE)
    where = f"(session {session_id!r}, seed {seed})"
    assert info.variable_count == len(listed), (
        f"GetSession says {info.variable_count} variables, ListVariables {len(listed)} {where}"
    )
    assert len({v.id for v in listed}) == len(listed) and len({v.name for v in listed}) == len(listed), where
    for var in listed:
        label = f"variable {var.name[:40]!r} {where}"
        assert var.version >= 1, label
        assert var.type in TYPES, f"{label}: type {var.type!r}"
        assert var.value.type_url in (f"{TYPE_PREFIX}{var.type}", f"{TYPE_PREFIX}{var.type}.binary"), (
            f"{label}: {var.value.type_url!r}"
        )
        strict_json(var.value.value)
        decode_variable_value(var)
        again = stub.GetVariable(
            pb2.GetVariableRequest(session_id=session_id, variable_identifier=var.id), timeout=UNARY_DEADLINE
        ).variable
        assert (again.name, again.type, again.version) == (var.name, var.type, var.version), label
        assert (again.value.type_url, again.value.value, again.binary_value) == (
            var.value.type_url,
            var.value.value,
            var.binary_value,
        ), label
    if listed:
        by_id = {v.id: v.version for v in listed}
        # A name may equal another variable's id (the fuzzer registers such names): an identifier
        # resolves to the id first, so only the other names are sure to name their own variable.
        by_name = {v.name: v.version for v in listed if v.name not in by_id}
        for table in (by_id, by_name):
            idents = list(table)
            got = stub.GetVariables(
                pb2.BatchGetVariablesRequest(session_id=session_id, variable_identifiers=idents), timeout=UNARY_DEADLINE
            )
            assert not got.missing_variables, where
            assert {n: v.version for n, v in got.variables.items()} == table, where
            compact = stub.GetVariables(
                pb2.BatchGetVariablesRequest(session_id=session_id, variable_identifiers=idents, values_only=True),
                timeout=UNARY_DEADLINE,
            )
            versions = dict(zip(compact.values.identifiers, compact.values.versions, strict=True))
            versions.update({n: v.version for n, v in compact.variables.items()})
            assert versions == table, where
            strict_json(compact.values.values_json or b"[]")
        watch = stub.WatchVariables(
            pb2.WatchVariablesRequest(
                session_id=session_id, variable_identifiers=list(by_id), include_initial_values=True
            ),
            timeout=UNARY_DEADLINE,
        )
        initial = {}
        for update in watch:
            assert update.update_type == "initial_value", (update.update_type, where)
            initial[update.variable.id] = update.variable.version
            if len(initial) == len(listed):
                break
        watch.cancel()
        assert initial == by_id, where
    return len(listed)


def test_every_method_survives_generated_input(fuzz_server: ServerProcess) -> None:
    """3,000 generated payloads (random, hostile, mutated) to all 13 methods each end with a gRPC status
    within their deadline and never UNAVAILABLE; afterwards the server is alive and under the memory
    bound, Ping answers, and every session we know satisfies the store's invariants."""
    seed = seed_of_run()
    print(f"fuzz seed: {seed} (replay with SNAKEPIT_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    with grpc.insecure_channel(fuzz_server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
        ids = setup_store(stub)
        valid = valid_requests(ids)
        hostile = hostile_requests(ids, rng)
        assert set(valid) == set(hostile) == set(METHODS) and all(valid.values())
        plan = generate(rng, valid, hostile, TOTAL_CALLS, _string_pool(ids))

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            outcomes = list(pool.map(lambda job: call_raw(channel, *job), plan))

        codes = Counter((o.method, o.code.name) for o in outcomes)
        print("outcomes:", dict(sorted(codes.items())))
        assert fuzz_server.process.poll() is None, f"the server died (seed {seed}); log:\n{fuzz_server.log()[-4000:]}"
        for o in outcomes:
            what = f"{o.method} with {o.size} bytes {o.payload[:120]!r} (seed {seed})"
            assert o.code != C.UNAVAILABLE, f"UNAVAILABLE for {what}: {o.details[:300]}"
            assert o.elapsed < o.deadline + HANG_SLACK, f"{what} took {o.elapsed:.1f}s, past its deadline"
            if not METHODS[o.method][1]:
                assert o.code != C.DEADLINE_EXCEEDED, f"no answer within {o.deadline}s for {what}"
            assert len(o.details) < 4096, f"a {len(o.details)}-character error message for {what}"
        assert {m for m, _ in plan} == set(METHODS)

        assert stub.Ping(pb2.PingRequest(message="after"), timeout=UNARY_DEADLINE).message == "after"
        rss = rss_mib(fuzz_server.process.pid)
        assert rss < RSS_BOUND_MIB, f"server RSS {rss:.0f} MiB after fuzzing (seed {seed})"
        stub.GetSession(pb2.GetSessionRequest(session_id=SESSION), timeout=UNARY_DEADLINE)  # never cleaned up
        counted = 0
        for session_id in [SESSION, *SCRATCH_SESSIONS, "fuzz-hostile", "fuzz-odd-meta"]:
            try:
                stub.GetSession(pb2.GetSessionRequest(session_id=session_id), timeout=UNARY_DEADLINE)
            except grpc.RpcError as err:
                assert err.code() == C.NOT_FOUND, (session_id, err.code(), err.details(), seed)
                continue
            counted += check_invariants(stub, session_id, seed)
        print(f"invariants checked on {counted} variables")
    assert fuzz_server.process.poll() is None, f"the server died (seed {seed})"
