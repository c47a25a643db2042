"""Writes random single and atomic batch updates over gRPC, printing each applied one.

Usage: history_writer.py ADDRESS SESSION_ID WRITER_ID OPS VAR...
Prints `W <name> <version> <value>` per applied change, then `DONE`.
Every operation writes its own unique value (WRITER_ID * 1_000_000 + op),
so a batch's changes share one value and singles have values of their own.
"""

import random
import sys

from snakepit_bridge import SessionContext, connect


def main() -> None:
    address, session_id, writer_id, ops, *names = sys.argv[1:]
    rng = random.Random(int(writer_id))
    with connect(address) as channel:
        ctx = SessionContext(session_id, channel)
        for op in range(int(ops)):
            value = int(writer_id) * 1_000_000 + op
            if rng.random() < 0.25:
                chosen = rng.sample(names, rng.choice([2, 3]))
                result = ctx.update_variables({n: value for n in chosen}, atomic=True)
                for name, version in result.new_versions.items():
                    print(f"W {name} {version} {value}")
            else:
                name = rng.choice(names)
                print(f"W {name} {ctx.update_variable(name, value)} {value}")
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
