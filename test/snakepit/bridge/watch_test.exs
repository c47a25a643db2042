defmodule Snakepit.Bridge.WatchTest do
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.{SessionStore, VariableUpdate}
  alias Snakepit.Test.Watchers

  import Snakepit.Test.Watchers, only: [next_update: 1]

  setup do
    sid = "watch-test-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)

    for name <- [:a, :b, :c],
        do: {:ok, _} = SessionStore.register_variable(sid, name, :integer, 0)

    on_exit(fn -> SessionStore.delete_session(sid) end)
    %{sid: sid}
  end

  test "initial value, then every change while keeping up", %{sid: sid} do
    :ok = SessionStore.update_variable(sid, :a, 5)
    assert {:ok, ref} = SessionStore.watch_variables(sid, [:a], include_initial: true)
    assert is_reference(ref)

    assert %VariableUpdate{
             update_type: :initial_value,
             name: "a",
             value: 5,
             version: 2,
             source: :elixir,
             type: :integer
           } = next_update(ref)

    for v <- 6..8 do
      :ok = SessionStore.update_variable(sid, :a, v, %{step: v})

      assert %VariableUpdate{
               update_type: :value_change,
               value: ^v,
               metadata: %{"step" => _},
               variable: %{value: ^v}
             } = next_update(ref)
    end
  end

  test "without include_initial only later changes arrive; other variables are not sent", %{
    sid: sid
  } do
    {:ok, ref} = SessionStore.watch_variables(sid, ["a"])
    :ok = SessionStore.update_variable(sid, :b, 1)
    :ok = SessionStore.update_variable(sid, :a, 1)
    assert %VariableUpdate{name: "a", value: 1} = next_update(ref)
    refute_received {:snakepit_variable_update, ^ref, _}
  end

  test "a slow reader is coalesced to the latest value, versions only growing", %{sid: sid} do
    {:ok, ref} = SessionStore.watch_variables(sid, [:a, :b])

    for i <- 1..5000,
        do: :ok = SessionStore.update_variable(sid, if(rem(i, 2) == 0, do: :a, else: :b), i)

    updates = collect_until(ref, fn u -> u.name == "a" and u.value == 5000 end)

    for name <- ["a", "b"] do
      versions = for u <- updates, u.name == name, do: u.version
      assert versions == Enum.sort(Enum.uniq(versions))
    end

    assert List.last(for u <- updates, u.name == "b", do: u.value) == 4999
  end

  test "an atomic batch arrives back to back with a shared batch number", %{sid: sid} do
    {:ok, ref} = SessionStore.watch_variables(sid, [:a, :b, :c])
    {:ok, _} = SessionStore.update_variables(sid, %{a: 1, b: 1}, atomic: true)
    :ok = SessionStore.update_variable(sid, :c, 1)
    updates = collect_until(ref, fn u -> u.name == "c" end)
    [x, y | _] = updates
    assert Enum.sort([x.name, y.name]) == ["a", "b"]
    assert x.batch != nil and x.batch == y.batch
    assert List.last(updates).batch == nil
  end

  test "deleted once, then session_closed last", %{sid: sid} do
    {:ok, ref} = SessionStore.watch_variables(sid, [:a, :b])
    :ok = SessionStore.delete_variable(sid, :a)
    assert %VariableUpdate{update_type: :deleted, name: "a"} = next_update(ref)
    :ok = SessionStore.delete_session(sid)
    assert %VariableUpdate{update_type: :session_closed, name: nil} = next_update(ref)
    refute_receive {:snakepit_variable_update, ^ref, _}, 50
  end

  test "since_versions resumes without duplicates", %{sid: sid} do
    :ok = SessionStore.update_variable(sid, :a, 1)

    {:ok, ref} =
      SessionStore.watch_variables(sid, [:a, :b],
        include_initial: true,
        since_versions: %{a: 2, b: 0}
      )

    assert %VariableUpdate{name: "b", update_type: :initial_value} = next_update(ref)
    :ok = SessionStore.update_variable(sid, :a, 2)
    assert %VariableUpdate{name: "a", update_type: :value_change, version: 3} = next_update(ref)
  end

  test "unwatch ends it at once and flushes the caller's mailbox", %{sid: sid} do
    {:ok, ref} = SessionStore.watch_variables(sid, [:a], include_initial: true)
    assert Watchers.count(sid) == 1
    assert :ok = SessionStore.unwatch_variables(ref)
    assert Watchers.count(sid) == 0
    :ok = SessionStore.update_variable(sid, :a, 1)
    refute_receive {:snakepit_variable_update, ^ref, _}, 50
    assert :ok = SessionStore.unwatch_variables(ref)
  end

  # The delivery task may hold a batch it took just before unwatch; nothing
  # from it may land after unwatch returns. Repeated to catch the race.
  test "nothing arrives after unwatch returns, even mid-delivery", %{sid: sid} do
    for v <- 1..300 do
      {:ok, ref} = SessionStore.watch_variables(sid, [:a, :b], include_initial: true)
      {:ok, _} = SessionStore.update_variables(sid, %{a: v, b: v})
      :ok = SessionStore.unwatch_variables(ref)
    end

    refute_receive {:snakepit_variable_update, _, _}, 100
  end

  test "the subscription dies with the watching process", %{sid: sid} do
    test_pid = self()

    watcher =
      spawn(fn ->
        {:ok, _} = SessionStore.watch_variables(sid, [:a])
        send(test_pid, :watching)
        receive do: (:stop -> :ok)
      end)

    assert_receive :watching
    assert Watchers.count(sid) == 1
    Process.exit(watcher, :kill)
    Watchers.await(sid, 0)
  end

  test "updates can go to another process", %{sid: sid} do
    test_pid = self()
    relay = spawn(fn -> receive do: (m -> send(test_pid, {:relayed, m})) end)
    {:ok, ref} = SessionStore.watch_variables(sid, [:a], pid: relay)
    :ok = SessionStore.update_variable(sid, :a, 3)
    assert_receive {:relayed, {:snakepit_variable_update, ^ref, %VariableUpdate{value: 3}}}, 5000
  end

  test "refusals subscribe nothing; bad shapes raise", %{sid: sid} do
    assert {:error, :not_found} = SessionStore.watch_variables(sid, [:a, :nope])
    assert {:error, {:invalid_argument, _}} = SessionStore.watch_variables(sid, [])
    assert {:error, {:session_not_found, "nope"}} = SessionStore.watch_variables("nope", [:a])
    assert Watchers.count(sid) == 0

    assert_raise ArgumentError, ~r/identifiers must be a list/, fn ->
      SessionStore.watch_variables(sid, :a)
    end

    assert_raise ArgumentError, ~r/:pid option/, fn ->
      SessionStore.watch_variables(sid, [:a], pid: :me)
    end

    assert_raise ArgumentError, ~r/ref must be/, fn -> SessionStore.unwatch_variables(:nope) end
  end

  test "stats count live and opened watchers", %{sid: sid} do
    before = SessionStore.stats()
    {:ok, ref} = SessionStore.watch_variables(sid, [:a])
    after_watch = SessionStore.stats()
    assert after_watch.watchers_opened > before.watchers_opened
    assert after_watch.elixir_watchers >= 1
    assert after_watch.watchers == after_watch.elixir_watchers + after_watch.grpc_watchers
    SessionStore.unwatch_variables(ref)
  end

  defp collect_until(ref, stop?, acc \\ []) do
    u = next_update(ref)
    if stop?.(u), do: Enum.reverse([u | acc]), else: collect_until(ref, stop?, [u | acc])
  end
end
