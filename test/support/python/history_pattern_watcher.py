"""Watches by pattern and prints what arrives, for the pattern watch tests.

Usage: history_pattern_watcher.py ADDRESS SESSION_ID PATTERN...
Prints READY once the watch is registered, then
`U <update_type> <name> <version> <value>` per update; exits after the
update of a variable named `<anything>_end`.
"""

import asyncio
import sys

from snakepit_bridge import AsyncSessionContext, connect_async


async def main(address: str, session_id: str, patterns: list[str]) -> None:
    async with connect_async(address) as channel:
        ctx = AsyncSessionContext(session_id, channel)
        async with ctx.watch_variables(patterns=patterns, include_initial=True) as watch:
            print("READY", flush=True)
            async for u in watch:
                print(f"U {u['update_type']} {u['name']} {u['version']} {u['value']}", flush=True)
                if u["name"].endswith("_end"):
                    break


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
