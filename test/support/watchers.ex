defmodule Snakepit.Test.Watchers do
  @moduledoc "Waiting on a session's watcher count and on watch updates, with deadlines instead of blind sleeps."

  import ExUnit.Assertions, only: [flunk: 1]
  alias Snakepit.Bridge.SessionStore

  @doc "The next update of the watch `ref`; fails the test after `timeout` ms."
  def next_update(ref, timeout \\ 5000) do
    receive do
      {:snakepit_variable_update, ^ref, %Snakepit.Bridge.VariableUpdate{} = u} -> u
    after
      timeout -> flunk("no update within #{timeout} ms")
    end
  end

  @doc "The session's live watcher count."
  def count(sid) do
    {:ok, %{watcher_count: n}} = SessionStore.get_session(sid)
    n
  end

  @doc "Polls every 5 ms until the count is `want`; fails after `timeout` ms."
  def await(sid, want, timeout \\ 10_000) do
    await_until(sid, want, System.monotonic_time(:millisecond) + timeout)
  end

  defp await_until(sid, want, deadline) do
    n = count(sid)

    cond do
      n == want ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        flunk("watcher count is #{n}, wanted #{want}")

      true ->
        Process.sleep(5) && await_until(sid, want, deadline)
    end
  end
end
