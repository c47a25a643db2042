defmodule Snakepit.Bridge.WatchE2ETest do
  # Real Python processes watching over gRPC; not async (listeners, OS processes).
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.{Server, SessionStore, VariableUpdate}
  alias Snakepit.Test.{Python, Watchers}

  @moduletag timeout: 120_000

  setup do
    start_supervised!({Server, host: "127.0.0.1", port: 0})
    sid = "e2e-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)
    on_exit(fn -> SessionStore.delete_session(sid) end)
    %{sid: sid, address: "127.0.0.1:#{Server.port()}", env: Server.worker_env(sid)}
  end

  test "the specified end-to-end test: Elixir updates, a Python watcher prints them in order", %{
    sid: sid,
    address: address,
    env: env
  } do
    {:ok, _} = SessionStore.register_variable(sid, :counter, :integer, 0)
    py = Python.start([Python.script("watch_counter.py"), address, sid, "3"], env)
    Watchers.await(sid, 1)

    # A watcher that keeps up gets every change: each update waits for the
    # previous line, so none can be coalesced away.
    for v <- 1..3 do
      :ok = SessionStore.update_variable(sid, :counter, v)
      assert Python.next_line(py) == "UPDATE:#{v}"
    end

    assert Python.wait_exit(py) == 0
    Watchers.await(sid, 0)
  end

  test "an Elixir process sees a Python update_variable with source python", %{
    sid: sid,
    address: address,
    env: env
  } do
    {:ok, _} = SessionStore.register_variable(sid, :temperature, :float, 0.5)
    {:ok, ref} = SessionStore.watch_variables(sid, [:temperature])
    port = String.split(address, ":") |> List.last()

    assert {:ok, %{"version" => 2}} =
             Python.client(port, sid, "update_variable", ["temperature", "0.9"], env)

    assert_receive {:snakepit_variable_update, ^ref,
                    %VariableUpdate{
                      name: "temperature",
                      value: 0.9,
                      version: 2,
                      source: :python,
                      update_type: :value_change
                    }},
                   5000
  end

  test "a Python worker switches strategy and model the moment Elixir changes them", %{
    sid: sid,
    address: address,
    env: env
  } do
    {:ok, _} =
      SessionStore.register_variable(sid, :strategy, :choice, "greedy",
        constraints: %{choices: ["greedy", "beam", "sample"]}
      )

    {:ok, _} =
      SessionStore.register_variable(sid, :model, :module, "small",
        constraints: %{allowed_modules: ["small", "large"]}
      )

    py = Python.start([Python.script("reactive_worker.py"), address, sid], env)
    assert_switched(py, ["strategy=greedy", "model=small"])

    Python.send_line(py, "3,9,4")
    assert Python.next_line(py) == "RESULT:greedy@small:9"

    :ok = SessionStore.update_variable(sid, :strategy, :beam)
    assert_switched(py, ["strategy=beam"])
    Python.send_line(py, "3,9,4")
    assert Python.next_line(py) == "RESULT:beam@small:9,4"

    :ok = SessionStore.update_variable(sid, :model, "large")
    assert_switched(py, ["model=large"])
    Python.send_line(py, "3,9,4")
    assert Python.next_line(py) == "RESULT:beam@large:9,4"

    :ok = SessionStore.delete_session(sid)
    assert Python.next_line(py) == "DONE"
    assert Python.wait_exit(py) == 0
  end

  defp assert_switched(py, expected) do
    lines = for _ <- expected, do: Python.next_line(py)
    assert Enum.sort(lines) == Enum.sort(Enum.map(expected, &("SWITCHED:" <> &1)))
  end

  for mode <- ["cancel", "close", "kill"] do
    test "a Python watcher that leaves by #{mode} frees its subscription", %{
      sid: sid,
      address: address,
      env: env
    } do
      {:ok, _} = SessionStore.register_variable(sid, :x, :integer, 0)
      before = Watchers.count(sid)
      py = Python.start([Python.script("watch_and_leave.py"), address, sid, unquote(mode)], env)
      assert Python.next_line(py) == "READY"
      Watchers.await(sid, before + 1)

      if unquote(mode) == "kill" do
        {:os_pid, os_pid} = Port.info(py, :os_pid)
        {_, 0} = System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
      else
        Python.send_line(py, "leave")
        assert Python.next_line(py) == "LEFT"
      end

      Watchers.await(sid, before)
      if unquote(mode) != "kill", do: Port.close(py)
    end
  end
end
