"""Watches one variable and reports each update at once, for the cluster test.

Usage: cluster_watcher.py ADDRESS SESSION_ID VAR [reconnect]
With `reconnect`, the watch resumes after UNAVAILABLE. Prints READY once the
first initial value is in, `U <version> <value> <source>`
per update as it arrives, CLOSED for `session_closed`, and at the end
`END ok` (the watch finished) or `END <status code name>` (the stream
failed), then exits.
"""

import sys

from snakepit_bridge import BridgeError, SessionContext, connect


def main(address: str, session_id: str, name: str, reconnect: bool) -> None:
    ready = False
    with connect(address) as channel:
        watch = SessionContext(session_id, channel).watch_variables([name], include_initial=True, reconnect=reconnect)
        try:
            for update in watch:
                if update["update_type"] == "session_closed":
                    print("CLOSED", flush=True)
                    continue
                if not ready:
                    ready = True
                    print("READY", flush=True)
                print(f"U {update['version']} {update['value']} {update['source']}", flush=True)
            print("END ok", flush=True)
        except BridgeError as e:
            print(f"END {e.code.name if e.code else type(e).__name__}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:] == ["reconnect"])
