defmodule Snakepit.Bridge.ClusterTest do
  # Three peer BEAM nodes on loopback (A owns the sessions; B and C are the
  # other doors), plus Python processes connected to C's gRPC server.
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.{Native, Server, VariableUpdate}
  alias Snakepit.Test.{Cluster, Python}

  @moduletag timeout: 180_000

  # Shared by every node's server (the application environment's :token).
  @token "cluster-test-token-" <> String.duplicate("0123456789", 4)

  setup_all do
    [{_, a}, {_, b}, {_, c}] = Cluster.start_peers([:a, :b, :c], token: @token)
    c_port = :erpc.call(c, Cluster, :serve, [[]])
    # A's server mints the tokens the workers connected to C present.
    _ = :erpc.call(a, Cluster, :serve, [[]])
    %{a: a, b: b, c: c, c_port: c_port}
  end

  defp on(node, fun, args), do: :erpc.call(node, Snakepit.Bridge.SessionStore, fun, args)

  defp new_id, do: "cluster-#{System.unique_integer([:positive])}"

  defp eventually(check, tries \\ 100) do
    cond do
      check.() -> true
      tries == 0 -> false
      true -> Process.sleep(50) && eventually(check, tries - 1)
    end
  end

  test "every SessionStore function acts on a session wherever it lives", %{a: a, b: b, c: c} do
    sid = new_id()
    assert {:ok, %{id: ^sid}} = on(a, :create_session, [sid])

    # Registered from B and C, held by A alone.
    assert {:ok, _} =
             on(b, :register_variable, [
               sid,
               :temp,
               :float,
               0.5,
               [constraints: %{min: 0.0, max: 1.0}]
             ])

    assert {:ok, _} =
             on(c, :register_variable, [
               sid,
               :mode,
               :choice,
               "fast",
               [constraints: %{choices: ["fast", "slow"]}]
             ])

    assert :erpc.call(a, Native, :session_exists, [sid])
    refute :erpc.call(b, Native, :session_exists, [sid])
    refute :erpc.call(c, Native, :session_exists, [sid])

    assert on(b, :update_variable, [sid, :temp, 0.7]) == :ok
    assert on(a, :get_variable_value, [sid, :temp]) == 0.7
    assert on(c, :put_variable, [sid, :temp, 0.8]) == {:ok, 3}

    # The owner's errors, unchanged, on every node.
    for node <- [a, b, c] do
      assert {:error, {:invalid_value, _}} = on(node, :update_variable, [sid, :temp, 5.0])

      assert on(node, :put_variable, [sid, :temp, 0.1, %{}, [expected_version: 1]]) ==
               {:error, {:version_conflict, 3}}

      assert on(node, :get_variable, [sid, :nope]) == {:error, :not_found}
      assert on(node, :get_variable_value, [sid, :nope, :default]) == :default
    end

    assert {:ok, %{found: %{"temp" => temp, "mode" => mode}, missing: ["nope"]}} =
             on(b, :get_variables, [sid, ["temp", "mode", "nope"]])

    assert {temp.value, mode.value} == {0.8, "fast"}

    assert on(c, :update_variables, [sid, %{"temp" => 0.2, "mode" => "slow"}, [atomic: true]]) ==
             {:ok, %{"temp" => {:ok, 4}, "mode" => {:ok, 2}}}

    assert {:error, {:batch_failed, %{"mode" => _}}} =
             on(b, :update_variables, [sid, %{"temp" => 0.3, "mode" => "medium"}, [atomic: true]])

    assert on(a, :get_variable_value, [sid, :temp]) == 0.2

    assert {:ok, [%{name: "mode"}, %{name: "temp"}]} = on(b, :list_variables, [sid])
    assert {:ok, [%{name: "temp"}]} = on(c, :list_variables, [sid, "t*"])
    assert on(c, :has_variable?, [sid, :mode])
    assert on(b, :session_exists?, [sid])
    assert {:ok, %{id: ^sid, variable_count: 2}} = on(c, :get_session, [sid])
    assert on(b, :touch_session, [sid]) == :ok
    assert sid in on(c, :list_sessions, [])

    assert on(b, :delete_variable, [sid, :mode]) == :ok
    refute on(a, :has_variable?, [sid, :mode])

    assert on(c, :delete_session, [sid]) == :ok

    for node <- [a, b, c] do
      refute on(node, :session_exists?, [sid])
      assert on(node, :get_session, [sid]) == {:error, :not_found}
      assert on(node, :get_variable, [sid, :temp]) == {:error, {:session_not_found, sid}}
      assert on(node, :touch_session, [sid]) == {:error, :not_found}
      refute sid in on(node, :list_sessions, [])
    end
  end

  test "an id that a reachable node owns cannot be created on another", %{a: a, b: b, c: c} do
    sid = new_id()
    assert {:ok, _} = on(a, :create_session, [sid])
    assert on(b, :create_session, [sid]) == {:error, {:already_exists, sid}}
    assert on(a, :create_session, [sid]) == {:error, {:already_exists, sid}}

    # Two nodes racing for one new id: exactly one wins.
    raced = new_id()

    results =
      [b, c]
      |> Enum.map(fn node -> Task.async(fn -> on(node, :create_session, [raced]) end) end)
      |> Task.await_many()

    assert Enum.count(results, &match?({:ok, _}, &1)) == 1
    assert {:error, {:already_exists, raced}} in results
  end

  test "gRPC InitializeSession creates the session on the node it reached, unique across the cluster",
       %{a: a, b: b, c: c, c_port: c_port} do
    env = %{"SNAKEPIT_BRIDGE_TOKEN" => @token}
    sid = new_id()

    assert {:ok, %{"initialized" => true}} =
             Python.client(c_port, sid, "ping_and_initialize", ["hi"], env)

    assert :erpc.call(c, Native, :session_exists, [sid])
    refute :erpc.call(a, Native, :session_exists, [sid])
    assert on(a, :session_exists?, [sid])
    assert {:ok, _} = on(b, :register_variable, [sid, :n, :integer, 1])

    taken = new_id()
    assert {:ok, _} = on(a, :create_session, [taken])

    assert {:error, %{"code" => "ALREADY_EXISTS"}} =
             Python.client(c_port, taken, "ping_and_initialize", ["hi"], env)

    refute :erpc.call(c, Native, :session_exists, [taken])
  end

  test "an Elixir watcher on B and a Python watcher through C see every write made on A and B, in order",
       %{a: a, b: b, c_port: c_port} do
    sid = new_id()
    assert {:ok, _} = on(a, :create_session, [sid])
    assert {:ok, _} = on(a, :register_variable, [sid, :temp, :float, 0.0])

    {watcher, {:ok, ref}} =
      :erpc.call(b, Cluster, :watcher, [self(), sid, [:temp], [include_initial: true]])

    assert_receive {:watched, ^watcher,
                    {:snakepit_variable_update, ^ref,
                     %VariableUpdate{update_type: :initial_value, version: 1, value: +0.0}}},
                   5000

    # Minted by A, presented to C: the cluster shares the token.
    env = %{"SNAKEPIT_BRIDGE_TOKEN" => :erpc.call(a, Server, :session_token, [sid])}

    python =
      Python.start([Python.script("cluster_watcher.py"), "127.0.0.1:#{c_port}", sid, "temp"], env)

    assert Python.next_line(python) == "READY"
    assert Python.next_line(python) == "U 1 0.0 elixir"

    # Writes from the owner and from another node, each seen by both
    # watchers before the next is made: so every version must arrive.
    for {node, i} <- Enum.with_index([a, b, a, b, a, b], 1) do
      value = i / 10
      assert on(node, :update_variable, [sid, :temp, value]) == :ok
      version = i + 1

      assert_receive {:watched, ^watcher,
                      {:snakepit_variable_update, ^ref,
                       %VariableUpdate{
                         update_type: :value_change,
                         version: ^version,
                         value: ^value
                       }}},
                     5000

      assert Python.next_line(python) == "U #{version} #{value} elixir"
    end

    # Python's own calls through C, on A's session.
    assert {:ok, %{"value" => 0.6, "version" => 7}} =
             Python.client(c_port, sid, "get_variable", ["temp"], env)

    assert {:ok, %{"version" => 8}} =
             Python.client(c_port, sid, "update_variable", ["temp", "0.25"], env)

    assert on(a, :get_variable_value, [sid, :temp]) == 0.25

    assert_receive {:watched, ^watcher,
                    {:snakepit_variable_update, ^ref,
                     %VariableUpdate{version: 8, source: :python}}},
                   5000

    assert Python.next_line(python) == "U 8 0.25 python"

    # Unwatching from B: nothing more reaches the watcher.
    send(watcher, {:unwatch, self()})
    assert_receive {:unwatched, ^watcher}, 5000
    assert on(a, :update_variable, [sid, :temp, 0.5]) == :ok
    assert Python.next_line(python) == "U 9 0.5 elixir"
    refute_receive {:watched, ^watcher, _}, 300

    # The session ends on A: Python's stream ends with it.
    assert on(b, :delete_session, [sid]) == :ok
    assert Python.next_line(python) == "CLOSED"
    assert Python.next_line(python) == "END ok"
    assert Python.wait_exit(python) == 0
  end

  test "an owner that does not answer in time makes calls {:error, {:unavailable, node}}",
       %{a: a, b: b} do
    sid = new_id()
    assert {:ok, _} = on(a, :create_session, [sid])
    assert {:ok, _} = on(a, :register_variable, [sid, :temp, :float, 0.5])
    # B knows where the session lives before A stops answering.
    assert on(b, :get_variable_value, [sid, :temp]) == 0.5

    :ok = :erpc.call(b, Application, :put_env, [:snakepit, :cluster_timeout, 300])
    os_pid = Integer.to_string(Cluster.os_pid(a))
    {_, 0} = System.cmd("kill", ["-STOP", os_pid])

    try do
      assert on(b, :get_variable, [sid, :temp]) == {:error, {:unavailable, a}}
      assert on(b, :get_session, [sid]) == {:error, {:unavailable, a}}
      assert on(b, :get_variable_value, [sid, :temp, :default]) == :default
      refute on(b, :session_exists?, [sid])
    after
      {_, 0} = System.cmd("kill", ["-CONT", os_pid])
      :ok = :erpc.call(b, Application, :delete_env, [:snakepit, :cluster_timeout])
    end

    assert on(b, :get_variable_value, [sid, :temp]) == 0.5
  end

  test "a slow Python reader through C is coalesced at the owner and ends on the last value",
       %{a: a, c_port: c_port} do
    sid = new_id()
    assert {:ok, _} = on(a, :create_session, [sid])
    assert {:ok, _} = on(a, :register_variable, [sid, :temp, :integer, 0])
    env = %{"SNAKEPIT_BRIDGE_TOKEN" => :erpc.call(a, Server, :session_token, [sid])}

    # 5 ms per update read: far behind 2,000 writes made as fast as :erpc allows.
    python =
      Python.start(
        [Python.script("history_watcher.py"), "127.0.0.1:#{c_port}", sid, "5", "temp"],
        env
      )

    assert Python.next_line(python) == "READY"
    for i <- 1..2000, do: :ok = on(a, :update_variable, [sid, :temp, i])
    Python.send_line(python, "FINAL temp=2001")

    versions =
      Stream.repeatedly(fn -> Python.next_line(python, 60_000) end)
      |> Enum.take_while(&(&1 != "END"))
      |> Enum.map(fn "U temp " <> rest ->
        rest |> String.split() |> hd() |> String.to_integer()
      end)

    assert versions == Enum.sort(Enum.uniq(versions))
    assert List.last(versions) == 2001
    assert length(versions) < 2001, "a reader 5 ms per update got all 2,000: nothing coalesced"
    assert Python.wait_exit(python) == 0

    # The relay and the owner's subscription go with the stream.
    assert eventually(fn -> match?({:ok, %{watcher_count: 0}}, on(a, :get_session, [sid])) end)
  end

  test "a Python watch through another node resumes when that node's server restarts",
       %{a: a, b: b} do
    name = :"resume_server_#{System.unique_integer([:positive])}"
    port = :erpc.call(b, Cluster, :serve, [[name: name]])
    sid = new_id()
    assert {:ok, _} = on(a, :create_session, [sid])
    assert {:ok, _} = on(a, :register_variable, [sid, :temp, :float, 0.0])
    env = %{"SNAKEPIT_BRIDGE_TOKEN" => :erpc.call(a, Server, :session_token, [sid])}

    python =
      Python.start(
        [Python.script("cluster_watcher.py"), "127.0.0.1:#{port}", sid, "temp", "reconnect"],
        env
      )

    assert Python.next_line(python) == "READY"
    assert Python.next_line(python) == "U 1 0.0 elixir"
    assert on(a, :update_variable, [sid, :temp, 0.5]) == :ok
    assert Python.next_line(python) == "U 2 0.5 elixir"

    :ok = :erpc.call(b, GenServer, :stop, [name])
    # Written while the watcher is away: it arrives on resume, once.
    assert on(a, :update_variable, [sid, :temp, 0.25]) == :ok
    ^port = :erpc.call(b, Cluster, :serve, [[name: name, port: port]])
    assert Python.next_line(python, 30_000) == "U 3 0.25 elixir"

    assert on(a, :update_variable, [sid, :temp, 0.75]) == :ok
    assert Python.next_line(python) == "U 4 0.75 elixir"

    assert on(a, :delete_session, [sid]) == :ok
    assert Python.next_line(python) == "CLOSED"
    assert Python.next_line(python) == "END ok"
    assert Python.wait_exit(python) == 0
    :ok = :erpc.call(b, GenServer, :stop, [name])
  end

  test "bench/cluster_latency.exs measures every path in a tiny run" do
    Code.require_file(Path.expand("../../../bench/cluster_latency.exs", __DIR__))
    # Through a variable: the module exists only once the file is required.
    bench = Snakepit.Bench.ClusterLatency
    r = bench.run(updates: 20, warmup: 2)

    for kind <- [:elixir, :python], path <- [:same_node, :cross_node] do
      figures = r[kind][path]
      assert figures.count > 0 and figures.count <= 20, "#{kind} #{path}: #{inspect(figures)}"
      assert figures.p50 > 0 and figures.p99 >= figures.p50
    end

    assert r.plain_message.count == 20
    assert bench.format(r) =~ "| Python watcher (via gRPC) |"
  end

  test "when the owner node dies, its watchers get one last message and its sessions are gone",
       %{b: b, c_port: c_port} do
    name = :"doomed_#{System.unique_integer([:positive])}"
    {_, doomed} = Cluster.start_peer(name, token: @token)
    _ = :erpc.call(doomed, Cluster, :serve, [[]])
    sid = new_id()
    assert {:ok, _} = on(doomed, :create_session, [sid])
    assert {:ok, _} = on(doomed, :register_variable, [sid, :temp, :float, 0.0])

    {watcher, {:ok, ref}} = :erpc.call(b, Cluster, :watcher, [self(), sid, [:temp], []])
    env = %{"SNAKEPIT_BRIDGE_TOKEN" => :erpc.call(doomed, Server, :session_token, [sid])}

    python =
      Python.start([Python.script("cluster_watcher.py"), "127.0.0.1:#{c_port}", sid, "temp"], env)

    assert Python.next_line(python) == "READY"
    assert Python.next_line(python) == "U 1 0.0 elixir"

    assert on(doomed, :update_variable, [sid, :temp, 0.5]) == :ok

    assert_receive {:watched, ^watcher,
                    {:snakepit_variable_update, ^ref, %VariableUpdate{version: 2}}},
                   5000

    assert Python.next_line(python) == "U 2 0.5 elixir"

    Cluster.crash(doomed)
    doomed_name = Atom.to_string(doomed)

    assert_receive {:watched, ^watcher,
                    {:snakepit_variable_update, ^ref,
                     %VariableUpdate{
                       update_type: :session_closed,
                       metadata: %{"reason" => "nodedown", "node" => ^doomed_name}
                     }}},
                   10_000

    refute_receive {:watched, ^watcher, _}, 300
    assert Python.next_line(python) == "END UNAVAILABLE"
    assert Python.wait_exit(python) == 0

    # Gone, not stale: once B knows the node is down, the session does not exist.
    assert eventually(fn ->
             on(b, :get_variable, [sid, :temp]) == {:error, {:session_not_found, sid}}
           end)

    assert on(b, :get_session, [sid]) == {:error, :not_found}
    refute sid in on(b, :list_sessions, [])

    # Unwatching a watch whose owner died is fine.
    send(watcher, {:unwatch, self()})
    assert_receive {:unwatched, ^watcher}, 5000

    # A node by that name that comes back starts with an empty store.
    assert {_, ^doomed} = Cluster.start_peer(name, token: @token)
    refute on(doomed, :session_exists?, [sid])
    assert on(b, :get_session, [sid]) == {:error, :not_found}
  end
end
