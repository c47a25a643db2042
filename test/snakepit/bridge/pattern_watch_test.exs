defmodule Snakepit.Bridge.PatternWatchTest do
  # Watches by glob pattern (`patterns:`) from Elixir: variables that match
  # now, and variables registered later that match.
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.{SessionStore, VariableUpdate}
  alias Snakepit.Test.Watchers

  import Snakepit.Test.Watchers, only: [next_update: 1]

  setup do
    sid = "pattern-watch-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)

    for name <- [:temp_a, :temp_b, :other],
        do: {:ok, _} = SessionStore.register_variable(sid, name, :integer, 0)

    on_exit(fn -> SessionStore.delete_session(sid) end)
    %{sid: sid}
  end

  # Every update that arrives within `quiet` ms of the previous one.
  defp drain(ref, quiet \\ 100, acc \\ []) do
    receive do
      {:snakepit_variable_update, ^ref, %VariableUpdate{} = u} -> drain(ref, quiet, [u | acc])
    after
      quiet -> Enum.reverse(acc)
    end
  end

  test "matching variables start as initial values, in name order; others are not watched", %{
    sid: sid
  } do
    :ok = SessionStore.update_variable(sid, :temp_b, 7)

    {:ok, ref} =
      SessionStore.watch_variables(sid, [], patterns: ["temp_*"], include_initial: true)

    assert %VariableUpdate{update_type: :initial_value, name: "temp_a", value: 0, version: 1} =
             next_update(ref)

    assert %VariableUpdate{update_type: :initial_value, name: "temp_b", value: 7, version: 2} =
             next_update(ref)

    :ok = SessionStore.update_variable(sid, :other, 1)
    :ok = SessionStore.update_variable(sid, :temp_a, 1)

    assert %VariableUpdate{update_type: :value_change, name: "temp_a", value: 1, version: 2} =
             next_update(ref)

    assert drain(ref) == []
  end

  test "without include_initial, existing matches send only their changes", %{sid: sid} do
    {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_?"])
    assert drain(ref, 50) == []
    :ok = SessionStore.update_variable(sid, :temp_b, 3)

    assert %VariableUpdate{update_type: :value_change, name: "temp_b", value: 3} =
             next_update(ref)
  end

  test "a later matching registration arrives once as :registered, then its changes", %{
    sid: sid
  } do
    {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_*"])
    {:ok, id} = SessionStore.register_variable(sid, :temp_new, :float, 1.5)

    assert %VariableUpdate{
             update_type: :registered,
             variable_id: ^id,
             name: "temp_new",
             value: 1.5,
             version: 1,
             type: :float,
             source: :elixir,
             variable: %{name: "temp_new", value: 1.5}
           } = next_update(ref)

    for v <- [2.5, 3.5] do
      :ok = SessionStore.update_variable(sid, :temp_new, v)

      assert %VariableUpdate{update_type: :value_change, name: "temp_new", value: ^v} =
               next_update(ref)
    end

    assert drain(ref) == []
  end

  test "non-matching registrations and writes never arrive", %{sid: sid} do
    {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_*"])
    {:ok, _} = SessionStore.register_variable(sid, :pressure, :integer, 0)
    {:ok, _} = SessionStore.register_variable(sid, :xtemp_1, :integer, 0)
    {:ok, _} = SessionStore.register_variable(sid, :temp, :integer, 0)
    :ok = SessionStore.update_variable(sid, :pressure, 1)
    :ok = SessionStore.update_variable(sid, :other, 1)
    {:ok, _} = SessionStore.update_variables(sid, %{pressure: 2, temp: 2}, atomic: true)
    assert drain(ref) == []
  end

  test "a changed registration coalesces into :registered; delete sends :deleted", %{sid: sid} do
    test_pid = self()
    # A watcher that reads nothing until told: the registration and its change
    # pile up, and the watcher must still see `:registered` first.
    watcher =
      spawn_link(fn ->
        {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_*"])
        send(test_pid, {:watching, ref})
        receive do: (:go -> :ok)
        send(test_pid, {:got, drain(ref)})
      end)

    assert_receive {:watching, _ref}
    {:ok, _} = SessionStore.register_variable(sid, :temp_c, :integer, 1)
    :ok = SessionStore.update_variable(sid, :temp_c, 2)
    send(watcher, :go)
    assert_receive {:got, updates}, 5000

    assert [%VariableUpdate{name: "temp_c", update_type: first} | rest] = updates
    # Delivered as it happened, or coalesced: either way `:registered` comes first.
    assert first == :registered
    assert List.last(updates).value == 2
    assert Enum.all?(rest, &(&1.update_type == :value_change))

    {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_*"])
    :ok = SessionStore.delete_variable(sid, :temp_c)
    assert %VariableUpdate{update_type: :deleted, name: "temp_c"} = next_update(ref)
    :ok = SessionStore.delete_variable(sid, :temp_a)
    assert %VariableUpdate{update_type: :deleted, name: "temp_a"} = next_update(ref)
  end

  test "a matching variable registered and deleted before the watcher reads is never sent", %{
    sid: sid
  } do
    test_pid = self()

    watcher =
      spawn_link(fn ->
        {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_*"])
        send(test_pid, :watching)
        receive do: (:go -> :ok)
        send(test_pid, {:got, drain(ref)})
      end)

    assert_receive :watching
    # The delivery task may take the registration before the delete: then
    # both arrive. It may also take neither in between: then nothing does.
    {:ok, _} = SessionStore.register_variable(sid, :temp_gone, :integer, 0)
    :ok = SessionStore.delete_variable(sid, :temp_gone)
    send(watcher, :go)
    assert_receive {:got, updates}, 5000

    assert Enum.map(updates, &{&1.name, &1.update_type}) in [
             [],
             [{"temp_gone", :registered}, {"temp_gone", :deleted}]
           ]
  end

  test "the watch outlives its last variable: a new match after every delete still arrives", %{
    sid: sid
  } do
    {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_*"])
    :ok = SessionStore.delete_variable(sid, :temp_a)
    :ok = SessionStore.delete_variable(sid, :temp_b)
    assert %VariableUpdate{update_type: :deleted, name: "temp_a"} = next_update(ref)
    assert %VariableUpdate{update_type: :deleted, name: "temp_b"} = next_update(ref)
    assert Watchers.count(sid) == 1
    {:ok, _} = SessionStore.register_variable(sid, :temp_a, :integer, 9)

    assert %VariableUpdate{update_type: :registered, name: "temp_a", value: 9, version: 1} =
             next_update(ref)

    :ok = SessionStore.delete_session(sid)
    assert %VariableUpdate{update_type: :session_closed} = next_update(ref)
  end

  test "identifiers and patterns together deliver each variable once", %{sid: sid} do
    {:ok, ref} =
      SessionStore.watch_variables(sid, [:temp_a, :other],
        patterns: ["temp_*", "temp_?", "*_a"],
        include_initial: true
      )

    initial = drain(ref)
    assert Enum.map(initial, & &1.name) |> Enum.sort() == ["other", "temp_a", "temp_b"]
    assert Enum.all?(initial, &(&1.update_type == :initial_value))

    {:ok, _} = SessionStore.update_variables(sid, %{temp_a: 1, temp_b: 1, other: 1})
    changes = drain(ref)
    assert Enum.map(changes, & &1.name) |> Enum.sort() == ["other", "temp_a", "temp_b"]

    # Matched by two patterns: registered once.
    {:ok, _} = SessionStore.register_variable(sid, :temp_z, :integer, 0)

    assert [%VariableUpdate{name: "temp_z", update_type: :registered}] = drain(ref)
  end

  test "many pattern watchers each get a registration", %{sid: sid} do
    refs = for p <- ["temp_*", "*", "temp_n?w", "t*w"], do: elem(watch(sid, p), 1)
    {:ok, _} = SessionStore.register_variable(sid, :temp_new, :integer, 4)

    for ref <- refs do
      assert %VariableUpdate{update_type: :registered, name: "temp_new", value: 4} =
               next_update(ref)
    end
  end

  defp watch(sid, pattern), do: SessionStore.watch_variables(sid, [], patterns: [pattern])

  test "resume: a match registered while away comes as its current value", %{sid: sid} do
    {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: ["temp_*"])
    :ok = SessionStore.update_variable(sid, :temp_a, 1)
    assert %VariableUpdate{name: "temp_a", version: 2} = next_update(ref)
    :ok = SessionStore.unwatch_variables(ref)

    # Away: temp_b changes, temp_new is registered and changed, temp_a is quiet.
    :ok = SessionStore.update_variable(sid, :temp_b, 5)
    {:ok, _} = SessionStore.register_variable(sid, :temp_new, :integer, 1)
    :ok = SessionStore.update_variable(sid, :temp_new, 2)

    {:ok, ref} =
      SessionStore.watch_variables(sid, [],
        patterns: ["temp_*"],
        since_versions: %{temp_a: 2, temp_b: 1}
      )

    got = drain(ref) |> Enum.map(&{&1.name, &1.update_type, &1.value, &1.version})

    assert Enum.sort(got) == [
             {"temp_b", :initial_value, 5, 2},
             {"temp_new", :initial_value, 2, 2}
           ]

    # Back in step: a new registration arrives as usual.
    {:ok, _} = SessionStore.register_variable(sid, :temp_later, :integer, 0)
    assert %VariableUpdate{name: "temp_later", update_type: :registered} = next_update(ref)
  end

  test "limits and refusals subscribe nothing; bad shapes raise", %{sid: sid} do
    assert {:error, {:invalid_argument, _}} = SessionStore.watch_variables(sid, [])
    assert {:error, {:invalid_argument, _}} = SessionStore.watch_variables(sid, [], patterns: [])

    assert {:error, {:invalid_argument, msg}} =
             SessionStore.watch_variables(sid, [], patterns: [""])

    assert msg =~ "empty"

    # The patterns' total length, not each one's.
    long = String.duplicate("x", 600)

    assert {:error, {:resource_exhausted, msg}} =
             SessionStore.watch_variables(sid, [], patterns: [long, long])

    assert msg =~ "max_pattern_bytes"

    # Identifiers and patterns count together against max_batch (checked first).
    ids = for i <- 1..10_000, do: "missing_#{i}"
    assert {:error, :not_found} = SessionStore.watch_variables(sid, ids)

    assert {:error, {:resource_exhausted, msg}} =
             SessionStore.watch_variables(sid, ids, patterns: ["temp_*"])

    assert msg =~ "max_batch"

    assert {:error, :not_found} = SessionStore.watch_variables(sid, [:nope], patterns: ["temp_*"])

    assert {:error, {:session_not_found, "nope"}} =
             SessionStore.watch_variables("nope", [], patterns: ["*"])

    assert Watchers.count(sid) == 0

    for bad <- ["temp_*", [:temp_a], [~c"temp_*"], [nil]] do
      assert_raise ArgumentError, ~r/:patterns option must be a list of strings/, fn ->
        SessionStore.watch_variables(sid, [], patterns: bad)
      end
    end
  end
end

defmodule Snakepit.Bridge.PatternWatchE2ETest do
  # A Python process watching by pattern over gRPC; not async (listener, OS process).
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.{Server, SessionStore}
  alias Snakepit.Test.Python

  @moduletag timeout: 120_000

  test "a Python pattern watcher gets matches now, later registrations, changes and deletes" do
    start_supervised!({Server, host: "127.0.0.1", port: 0})
    sid = "pattern-e2e-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)
    on_exit(fn -> SessionStore.delete_session(sid) end)
    {:ok, _} = SessionStore.register_variable(sid, :temp_a, :integer, 1)
    {:ok, _} = SessionStore.register_variable(sid, :other, :integer, 0)
    address = "127.0.0.1:#{Server.port()}"

    py =
      Python.start(
        [Python.script("history_pattern_watcher.py"), address, sid, "temp_*"],
        Server.worker_env(sid)
      )

    assert Python.next_line(py) == "READY"
    assert Python.next_line(py) == "U initial_value temp_a 1 1"

    # Each step waits for its line, so nothing is coalesced.
    :ok = SessionStore.update_variable(sid, :other, 5)
    {:ok, _} = SessionStore.register_variable(sid, :temp_b, :integer, 7)
    assert Python.next_line(py) == "U registered temp_b 1 7"
    :ok = SessionStore.update_variable(sid, :temp_b, 8)
    assert Python.next_line(py) == "U value_change temp_b 2 8"
    {:ok, _} = SessionStore.register_variable(sid, :pressure, :integer, 0)
    :ok = SessionStore.delete_variable(sid, :temp_a)
    assert Python.next_line(py) == "U deleted temp_a 1 1"
    {:ok, _} = SessionStore.register_variable(sid, :temp_end, :integer, 0)
    assert Python.next_line(py) == "U registered temp_end 1 0"
    assert Python.wait_exit(py) == 0
  end
end
