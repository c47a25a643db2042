"""numpy values and the binary path, both directions (numpy is in the dev pins)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
import pytest
from _support import AnyMode
from snakepit_bridge import ValidationError
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc
from snakepit_bridge.values import BINARY_THRESHOLD


@pytest.fixture
def raw_stub(server_address: str) -> Any:
    with grpc.insecure_channel(server_address) as channel:
        yield pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]


def _raw_variable(stub: Any, session_id: str, name: str) -> pb2.Variable:
    # Asks for the binary path as snakepit_bridge does; without the header
    # every value is JSON (test_v04_client.py).
    response: pb2.GetVariableResponse = stub.GetVariable(
        pb2.GetVariableRequest(session_id=session_id, variable_identifier=name),
        metadata=(("snakepit-accept-binary", "raw_le"),),
    )
    return response.variable


async def test_large_embedding_round_trip(ctx: AnyMode, raw_stub: Any) -> None:
    arr = np.random.default_rng(1).standard_normal(4096)
    await ctx.register_variable("emb", "embedding", arr, constraints={"dimensions": 4096})
    got = await ctx.get_variable("emb")
    assert isinstance(got, list) and all(type(x) is float for x in got)
    assert np.array_equal(np.array(got), arr)  # float64 raw bytes: bit-exact

    # The server answers on the binary path too: float64 raw little-endian bytes.
    var = _raw_variable(raw_stub, ctx.session_id, "emb")
    assert var.value.type_url == "type.googleapis.com/snakepit.embedding.binary"
    meta = json.loads(var.value.value)
    assert meta["shape"] == [4096] and meta["dtype"] == "float64"
    assert meta.get("binary_format", "raw_le") == "raw_le"
    assert np.array_equal(np.frombuffer(var.binary_value, dtype="<f8"), arr)

    update = arr[::-1].copy()
    assert await ctx.update_variable("emb", update) == 2
    assert np.array_equal(np.array(await ctx.get_variable("emb")), update)


async def test_float32_array_is_widened_exactly(ctx: AnyMode) -> None:
    arr = np.linspace(0, 1, 2048, dtype=np.float32)
    await ctx.register_variable("emb32", "embedding", arr)
    got = np.array(await ctx.get_variable("emb32"))
    assert got.dtype == np.float64
    assert np.array_equal(got, arr.astype(np.float64))


async def test_large_tensor_round_trip(ctx: AnyMode, raw_stub: Any) -> None:
    arr = np.arange(32 * 64, dtype=np.float64).reshape(32, 64) / 7.0
    await ctx.register_variable("t", "tensor", arr, constraints={"shape": [32, 64]})
    got = await ctx.get_variable("t")
    assert got["shape"] == [32, 64]
    assert np.array_equal(np.array(got["data"]).reshape(got["shape"]), arr)
    var = _raw_variable(raw_stub, ctx.session_id, "t")
    assert var.value.type_url == "type.googleapis.com/snakepit.tensor.binary"
    assert len(var.binary_value) == arr.size * 8


async def test_server_uses_the_binary_path_for_large_json_values(ctx: AnyMode, raw_stub: Any) -> None:
    values = [i / 3 for i in range(1500)]
    await ctx.register_variable("big", "embedding", values)  # sent as a JSON list
    var = _raw_variable(raw_stub, ctx.session_id, "big")
    assert var.value.type_url.endswith(".binary")
    assert await ctx.get_variable("big") == values


async def test_small_values_stay_json(ctx: AnyMode, raw_stub: Any) -> None:
    arr = np.arange(BINARY_THRESHOLD - 1, dtype=np.float64)
    await ctx.register_variable("small", "embedding", arr)
    var = _raw_variable(raw_stub, ctx.session_id, "small")
    assert var.value.type_url == "type.googleapis.com/snakepit.embedding"
    assert var.binary_value == b""
    assert await ctx.get_variable("small") == arr.tolist()


async def test_batch_update_with_numpy(ctx: AnyMode) -> None:
    await ctx.register_variable("e", "embedding", np.zeros(2048))
    await ctx.register_variable("t", "tensor", np.zeros((2, 1024)))
    await ctx.register_variable("s", "float", 0.0)
    e = np.full(2048, 0.25)
    t = np.arange(2048, dtype=np.float32).reshape(2, 1024)
    result = await ctx.update_variables({"e": e, "t": t, "s": np.float64(1.5)}, atomic=True)
    assert dict(result) == {"e": True, "t": True, "s": True}
    got = await ctx.get_variables(["e", "t", "s"])
    assert np.array_equal(np.array(got["e"]), e)
    assert got["t"]["shape"] == [2, 1024] and np.array_equal(np.array(got["t"]["data"]), t.ravel())
    assert got["s"] == 1.5


async def test_binary_and_compact_values_are_one_batch(ctx: AnyMode) -> None:
    # Binary-path values travel as Any messages, the others in the compact
    # form; together they are still one batch: in the order asked, and all or
    # nothing when atomic.
    await ctx.register_variable("e", "embedding", np.zeros(2048))
    await ctx.register_variable("k", "integer", 0, constraints={"min": 0})
    await ctx.register_variable("s", "string", "a")
    refused = await ctx.update_variables({"e": np.ones(2048), "k": -1, "s": "b"}, atomic=True)
    assert not refused.success and "below minimum 0" in str(refused["k"])
    assert await ctx.get_variables(["s", "e", "k"]) == {"s": "a", "e": [0.0] * 2048, "k": 0}
    applied = await ctx.update_variables({"e": np.ones(2048), "k": 3, "s": "b"}, atomic=True)
    assert applied.success and applied.new_versions == {"e": 2, "k": 2, "s": 2}
    got = await ctx.get_variables(["k", "missing", "e", "s"])
    assert list(got) == ["k", "e", "s"] and got.missing == ["missing"]
    assert got == {"k": 3, "e": [1.0] * 2048, "s": "b"}


async def test_binary_value_is_still_validated(ctx: AnyMode) -> None:
    await ctx.register_variable("e", "embedding", np.zeros(2048), constraints={"dimensions": 2048})
    with pytest.raises(ValidationError) as info:
        await ctx.update_variable("e", np.zeros(4096))
    assert "4096" in info.value.message
    with pytest.raises(ValidationError):
        await ctx.register_variable("t", "tensor", {"shape": [3, 1024], "data": np.zeros(2048)})
