defmodule Snakepit.DemoSmokeTest do
  # Runs the README's main job, shortened, as a user would: a separate OS
  # process with real Python workers. It must reach its summary and exit 0.
  use ExUnit.Case, async: false

  @moduletag timeout: 180_000

  test "the reactive demo runs to a consistent summary" do
    {out, status} =
      System.cmd(
        "mix",
        [
          "run",
          "--no-compile",
          "examples/reactive_demo/demo.exs",
          "--seconds",
          "6",
          "--workers",
          "2"
        ],
        env: [{"MIX_ENV", "test"}, {"SNAKEPIT_PYTHON", Snakepit.Test.Python.python()}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ "worker 2 resumed with"
    assert out =~ "matches the store"
    assert out =~ ~r/Elixir → Python: \d+ optimizer decisions \+ 3 scripted changes/
    assert out =~ ~r/reaction latency, Elixir write → Python reaction: p50 \d+ µs/
    assert out =~ "strategy greedy→beam"
    assert out =~ "consistency: OK"
  end
end
