# Logs of passing tests stay quiet; a failing test prints what it logged.
ExUnit.start(capture_log: true)
