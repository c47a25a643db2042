"""Python half of the minimal pair: prints each new temperature as it is set.

Usage: python examples/minimal/watch.py ADDRESS SESSION_ID
"""

import asyncio
import sys

import grpc
from snakepit_bridge import AsyncSessionContext


async def main(address: str, session_id: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        ctx = AsyncSessionContext(session_id, channel)
        async for update in ctx.watch_variables(["temperature"]):
            print(f"temperature is now {update['value']} (version {update['version']})")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
