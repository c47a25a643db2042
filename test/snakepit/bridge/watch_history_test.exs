defmodule Snakepit.Bridge.WatchHistoryTest do
  # The watch guarantees across languages, checked on recorded histories in the
  # spirit of etcd's robustness tests: Elixir and Python writers (single and
  # atomic batch updates) race Elixir and Python watchers, fast and slow; then
  # every watcher's history is validated against what the writers recorded.
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.{Server, SessionStore, VariableUpdate}
  alias Snakepit.Test.Python

  @moduletag timeout: 180_000
  @vars ~w(a b c d)

  setup do
    start_supervised!({Server, host: "127.0.0.1", port: 0})
    sid = "history-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)
    for v <- @vars, do: {:ok, _} = SessionStore.register_variable(sid, v, :integer, 0)
    on_exit(fn -> SessionStore.delete_session(sid) end)
    %{sid: sid, address: "127.0.0.1:#{Server.port()}", env: Server.worker_env(sid)}
  end

  test "ordered, unique, final, atomic batches adjacent — for every watcher", %{
    sid: sid,
    address: address,
    env: env
  } do
    # Watchers first: two Elixir (one slow), two Python (one slow).
    elixir_watchers = for slow <- [0, 1], do: start_elixir_watcher(sid, slow)

    python_watchers =
      for slow <- ["0", "2"],
          do: Python.start([Python.script("history_watcher.py"), address, sid, slow | @vars], env)

    for py <- python_watchers, do: assert(Python.next_line(py) == "READY")

    # Writers: two Elixir tasks, two Python processes.
    py_writers =
      for id <- ["7", "8"],
          do:
            Python.start(
              [Python.script("history_writer.py"), address, sid, id, "300" | @vars],
              env
            )

    ex_writers = for id <- [1, 2], do: Task.async(fn -> elixir_writer(sid, id, 1500) end)

    written =
      Enum.flat_map(ex_writers, &Task.await(&1, 60_000)) ++
        Enum.flat_map(py_writers, &python_writes/1)

    written = Map.new(written)

    finals = for v <- @vars, into: %{}, do: {v, elem(SessionStore.get_variable(sid, v), 1)}
    final_line = "FINAL " <> Enum.map_join(finals, " ", fn {n, var} -> "#{n}=#{var.version}" end)

    histories =
      Enum.map(elixir_watchers, fn w -> {"elixir watcher", finish_elixir_watcher(w, finals)} end) ++
        Enum.map(python_watchers, fn py ->
          Python.send_line(py, final_line)
          {"python watcher", python_history(py)}
        end)

    for {label, history} <- histories do
      validate(label, history, written, finals)
    end
  end

  # Pattern watchers: variables matching "p_*" are registered (and some deleted)
  # while writers race; non-matching variables are written too. Every pattern
  # watcher's history must hold the same guarantees, start each variable with
  # :initial_value (present at the start) or :registered (later), end deleted
  # ones with :deleted, and contain no non-matching variable.
  @shared_p ~w(p_0 p_1)

  test "pattern watchers across registrations and deletes", %{
    sid: sid,
    address: address,
    env: env
  } do
    for v <- @shared_p, do: {:ok, _} = SessionStore.register_variable(sid, v, :integer, 0)

    watchers = [
      {"elixir pattern watcher", start_pattern_watcher(sid, [], ["p_*"], 0), &pattern?/1},
      {"slow elixir pattern watcher", start_pattern_watcher(sid, [], ["p_*"], 1), &pattern?/1},
      {"elixir ids+patterns watcher", start_pattern_watcher(sid, ["a"], ["p_*", "p_?"], 0),
       &(&1 == "a" or pattern?(&1))}
    ]

    py_writers =
      for id <- ["7", "8"],
          do:
            Python.start(
              [Python.script("history_writer.py"), address, sid, id, "300", "a", "b" | @shared_p],
              env
            )

    ex_writers = for id <- [1, 2], do: Task.async(fn -> pattern_writer(sid, id, 1500) end)

    {written, deleted} =
      Enum.reduce(ex_writers, {[], []}, fn t, {w, d} ->
        {w2, d2} = Task.await(t, 60_000)
        {w ++ w2, d ++ d2}
      end)

    written = Map.new(written ++ Enum.flat_map(py_writers, &python_writes/1))
    # Registered after every write and delete: once a watcher has it, it has the rest.
    {:ok, _} = SessionStore.register_variable(sid, "p_zend", :integer, 0)
    {:ok, live} = SessionStore.list_variables(sid)

    for {label, pid, covered?} <- watchers do
      history = finish_pattern_watcher(pid)

      finals =
        for var <- live, covered?.(var.name), var.name != "p_zend", into: %{}, do: {var.name, var}

      assert Enum.any?(Map.keys(finals), &String.starts_with?(&1, "p_w")), "no registrations"
      assert Enum.all?(history, fn {name, _, _, _, _} -> covered?.(name) end), "#{label}: foreign"
      # A :deleted update repeats the variable's last version: kinds are checked apart.
      values = for {n, v, x, b, kind} <- history, kind != :deleted, do: {n, v, x, b}
      validate(label, values, written, finals)
      validate_kinds(label, history, MapSet.new(deleted))
    end
  end

  defp pattern?(name), do: String.starts_with?(name, "p_")

  # -- writers --------------------------------------------------------------------

  defp elixir_writer(sid, id, ops) do
    :rand.seed(:exsss, {id, id, id})

    Enum.flat_map(1..ops, fn op ->
      value = id * 1_000_000 + op

      if :rand.uniform() < 0.25 do
        names = Enum.take(Enum.shuffle(@vars), Enum.random(2..3))

        {:ok, results} =
          SessionStore.update_variables(sid, Map.new(names, &{&1, value}), atomic: true)

        for {name, {:ok, version}} <- results, do: {{name, version}, value}
      else
        name = Enum.random(@vars)
        {:ok, version} = SessionStore.put_variable(sid, name, value)
        [{{name, version}, value}]
      end
    end)
  end

  # Like elixir_writer, over a..d, the shared p_ variables and the p_ variables
  # it registers itself; some of those are registered, changed and deleted at
  # once. Returns {written, deleted names}.
  defp pattern_writer(sid, id, ops) do
    :rand.seed(:exsss, {id, id, id})

    {written, deleted, _own} =
      Enum.reduce(1..ops, {[], [], []}, fn op, {written, deleted, own} ->
        value = id * 1_000_000 + op
        names = @vars ++ @shared_p ++ own
        dice = :rand.uniform()

        cond do
          dice < 0.10 ->
            name = "p_w#{id}_#{op}"
            {:ok, _} = SessionStore.register_variable(sid, name, :integer, value)
            {[{{name, 1}, value} | written], deleted, [name | own]}

          dice < 0.15 ->
            name = "p_tmp_w#{id}_#{op}"
            {:ok, _} = SessionStore.register_variable(sid, name, :integer, value)
            {:ok, 2} = SessionStore.put_variable(sid, name, value + 500_000)
            :ok = SessionStore.delete_variable(sid, name)
            {[{{name, 2}, value + 500_000}, {{name, 1}, value} | written], [name | deleted], own}

          dice < 0.35 ->
            chosen = Enum.take(Enum.shuffle(names), Enum.random(2..3))

            {:ok, results} =
              SessionStore.update_variables(sid, Map.new(chosen, &{&1, value}), atomic: true)

            {for({name, {:ok, version}} <- results, do: {{name, version}, value}) ++ written,
             deleted, own}

          true ->
            name = Enum.random(names)
            {:ok, version} = SessionStore.put_variable(sid, name, value)
            {[{{name, version}, value} | written], deleted, own}
        end
      end)

    {written, deleted}
  end

  defp python_writes(py, acc \\ []) do
    case Python.next_line(py, 60_000) do
      "DONE" ->
        acc

      "W " <> rest ->
        [name, version, value] = String.split(rest)
        python_writes(py, [{{name, String.to_integer(version)}, String.to_integer(value)} | acc])
    end
  end

  # -- watchers -------------------------------------------------------------------

  defp start_elixir_watcher(sid, slow_ms) do
    parent = self()

    pid =
      spawn_link(fn ->
        {:ok, ref} = SessionStore.watch_variables(sid, @vars, include_initial: true)
        send(parent, {:watching, self()})
        record(ref, slow_ms, [])
      end)

    assert_receive {:watching, ^pid}, 5000
    pid
  end

  defp record(ref, slow_ms, acc) do
    receive do
      {:snakepit_variable_update, ^ref, %VariableUpdate{} = u} ->
        if slow_ms > 0, do: Process.sleep(slow_ms)
        record(ref, slow_ms, [{u.name, u.version, u.value, u.batch} | acc])

      {:finish, finals, from} ->
        acc = Enum.reverse(acc)

        if reached?(acc, finals),
          do: send(from, {:history, self(), acc}),
          else: await_more(ref, slow_ms, acc, finals, from)
    end
  end

  defp await_more(ref, slow_ms, acc, finals, from) do
    receive do
      {:snakepit_variable_update, ^ref, %VariableUpdate{} = u} ->
        acc = acc ++ [{u.name, u.version, u.value, u.batch}]

        if reached?(acc, finals),
          do: send(from, {:history, self(), acc}),
          else: await_more(ref, slow_ms, acc, finals, from)
    after
      30_000 -> send(from, {:history, self(), acc})
    end
  end

  defp start_pattern_watcher(sid, identifiers, patterns, slow_ms) do
    parent = self()

    pid =
      spawn_link(fn ->
        {:ok, ref} =
          SessionStore.watch_variables(sid, identifiers, patterns: patterns, include_initial: true)

        send(parent, {:watching, self()})
        record_typed(ref, slow_ms, [], nil)
      end)

    assert_receive {:watching, ^pid}, 5000
    pid
  end

  # Records {name, version, value, batch, update_type} until the sentinel
  # registration p_zend arrives and someone asked for the history.
  defp record_typed(ref, slow_ms, acc, from) do
    receive do
      {:snakepit_variable_update, ^ref, %VariableUpdate{name: "p_zend"}} ->
        from = from || receive(do: ({:finish, from} -> from))
        send(from, {:history, self(), Enum.reverse(acc)})

      {:snakepit_variable_update, ^ref, %VariableUpdate{} = u} ->
        if slow_ms > 0, do: Process.sleep(slow_ms)

        record_typed(
          ref,
          slow_ms,
          [{u.name, u.version, u.value, u.batch, u.update_type} | acc],
          from
        )

      {:finish, from} ->
        record_typed(ref, slow_ms, acc, from)
    end
  end

  defp finish_pattern_watcher(pid) do
    send(pid, {:finish, self()})
    assert_receive {:history, ^pid, history}, 60_000
    history
  end

  # Per variable: the first update is :initial_value (it existed when the
  # watch started) or :registered (later); nothing follows :deleted; a
  # deleted variable that appears at all ends with :deleted.
  defp validate_kinds(label, history, deleted) do
    by_name = Enum.group_by(history, &elem(&1, 0), &elem(&1, 4))

    for {name, [first | _] = kinds} <- by_name do
      expected_first = if name in ["a" | @shared_p], do: :initial_value, else: :registered
      assert first == expected_first, "#{label}: #{name} starts with #{first}"
      assert Enum.count(kinds, &(&1 in [:initial_value, :registered])) == 1, "#{label}: #{name}"
      after_delete = kinds |> Enum.drop_while(&(&1 != :deleted)) |> Enum.drop(1)
      assert after_delete == [], "#{label}: #{name} has updates after :deleted"

      if MapSet.member?(deleted, name),
        do: assert(List.last(kinds) == :deleted, "#{label}: #{name} deleted but not told")
    end
  end

  defp reached?(history, finals) do
    Enum.all?(finals, fn {name, var} ->
      Enum.any?(history, fn {n, v, _, _} -> n == name and v >= var.version end)
    end)
  end

  defp finish_elixir_watcher(pid, finals) do
    send(pid, {:finish, finals, self()})
    assert_receive {:history, ^pid, history}, 60_000
    history
  end

  defp python_history(py, acc \\ []) do
    case Python.next_line(py, 60_000) do
      "END" ->
        Enum.reverse(acc)

      "U " <> rest ->
        [name, version, value] = String.split(rest)
        # Python updates carry no batch number; batches are told by their shared value.
        python_history(py, [
          {name, String.to_integer(version), String.to_integer(value), nil} | acc
        ])
    end
  end

  # -- validation -------------------------------------------------------------------

  defp validate(label, history, written, finals) do
    # Ordered and unique per variable, each value the one written at its version.
    Enum.reduce(history, %{}, fn {name, version, value, _}, last ->
      if prev = last[name],
        do: assert(version > prev, "#{label}: #{name} went from v#{prev} to v#{version}")

      # Version 1 is the registered value: known for variables registered mid-run.
      if version > 1 or Map.has_key?(written, {name, version}),
        do: assert(written[{name, version}] == value, "#{label}: #{name} v#{version} = #{value}")

      Map.put(last, name, version)
    end)

    # The final value equals the store's.
    for {name, var} <- finals do
      {^name, version, value, _} = history |> Enum.filter(&(elem(&1, 0) == name)) |> List.last()
      assert {version, value} == {var.version, var.value}, "#{label}: final #{name}"
    end

    # Atomic batches adjacent: the delivered changes of one batch form one run.
    # A batch is a value written to several variables (every operation writes its own value).
    batch_values =
      written
      |> Enum.group_by(fn {_, v} -> v end)
      |> Enum.filter(fn {_, l} -> length(l) > 1 end)
      |> Map.new()

    runs =
      history
      |> Enum.with_index()
      |> Enum.filter(fn {{_, v, value, _}, _} -> v > 1 and Map.has_key?(batch_values, value) end)

    for {value, entries} <- Enum.group_by(runs, fn {{_, _, value, _}, _} -> value end) do
      positions = Enum.map(entries, fn {_, i} -> i end)

      assert Enum.max(positions) - Enum.min(positions) == length(positions) - 1,
             "#{label}: batch #{value} split at positions #{inspect(positions)}"
    end
  end
end
