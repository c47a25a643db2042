"""`ctx[name]` and `name in ctx`: what they do in each mode."""

from __future__ import annotations

import inspect

import pytest
from snakepit_bridge import AsyncSessionContext, SessionContext, VariableNotFoundError


def test_blocking_getitem_and_contains(blocking_ctx: SessionContext) -> None:
    blocking_ctx.register_variable("temperature", "float", 0.7)
    assert blocking_ctx["temperature"] == 0.7
    assert "temperature" in blocking_ctx
    assert "missing" not in blocking_ctx
    assert 42 not in blocking_ctx  # not a name: False, no call
    with pytest.raises(KeyError) as info:
        blocking_ctx["missing"]
    assert isinstance(info.value, VariableNotFoundError)
    assert "missing" in str(info.value)


def test_context_is_not_iterable(blocking_ctx: SessionContext) -> None:
    with pytest.raises(TypeError):
        iter(blocking_ctx)  # type: ignore[call-overload]  # mypy knows it too


async def test_aio_getitem_is_awaitable(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("temperature", "float", 0.7)
    pending = aio_ctx["temperature"]
    assert inspect.isawaitable(pending)
    assert await pending == 0.7
    with pytest.raises(VariableNotFoundError):
        await aio_ctx["missing"]


async def test_aio_contains_raises_type_error(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("x", "integer", 1)
    with pytest.raises(TypeError, match="await ctx.has_variable"):
        "x" in aio_ctx  # noqa: B015
    assert await aio_ctx.has_variable("x") is True
