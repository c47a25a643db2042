defmodule Snakepit.Bridge.HostileTest do
  # Hostile inputs and clients against the NIF and the BEAM-hosted server.
  # A crash or stall of the Rust side takes the whole node down, so every test
  # ends by checking that the node still answers. Not async: these tests start
  # listeners, change the store's limits and open hundreds of sockets.
  use ExUnit.Case, async: false

  import Bitwise

  alias Snakepit.Bridge.{Server, SessionStore}
  alias Snakepit.Test.{HostileChild, Python}

  @moduletag timeout: 180_000

  defp unique(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"

  # One Ping from a real Python gRPC client with the server token `token`:
  # {:ok, "hostile"} or {:error, grpc_code}.
  defp ping(port, token, timeout_s \\ 5) do
    {out, status} =
      System.cmd(
        Python.python(),
        [Python.script("hostile_grpc.py"), "127.0.0.1:#{port}", "ping", "#{timeout_s}"],
        env: Python.env(%{"SNAKEPIT_BRIDGE_TOKEN" => token}),
        stderr_to_stdout: true
      )

    line = out |> String.split("\n", trim: true) |> List.last()

    case {status, line && Python.json_decode(line)} do
      {0, {:ok, %{"ok" => message}}} -> {:ok, message}
      {0, {:ok, %{"code" => code}}} -> {:error, code}
      _ -> raise "hostile_grpc.py ping exited #{status}:\n#{out}"
    end
  end

  # Polls `fun` until it returns a truthy value, for up to `timeout_ms`.
  defp eventually(what, timeout_ms, fun) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    poll(what, deadline, fun)
  end

  defp poll(what, deadline, fun) do
    cond do
      result = fun.() ->
        result

      System.monotonic_time(:millisecond) > deadline ->
        flunk("not within the time allowed: #{what}")

      true ->
        Process.sleep(50)
        poll(what, deadline, fun)
    end
  end

  # The node answers: a NIF round trip, a spawned process, a new file.
  defp assert_node_answers do
    sid = unique("alive")
    assert {:ok, _} = SessionStore.create_session(sid)
    assert {:ok, _} = SessionStore.register_variable(sid, :x, :integer, 1)
    assert 1 = SessionStore.get_variable_value(sid, :x)
    :ok = SessionStore.delete_session(sid)
    assert :pong = Task.async(fn -> :pong end) |> Task.await(5_000)
    path = Path.join(System.tmp_dir!(), unique("hostile-alive"))
    assert {:ok, file} = File.open(path, [:write])
    :ok = File.close(file)
    File.rm(path)
  end

  describe "a tensor whose shape product is 2^40" do
    test "is refused by the NIF, and the store is unchanged (in a child VM)" do
      {out, status} = HostileChild.run(:huge_tensor_nif)
      assert status == 0, "the child VM exited #{inspect(status)}:\n#{out}"
      assert out =~ ~r/^OK /m
      assert_node_answers()
    end

    test "is refused over gRPC by the BEAM-hosted server, which keeps serving (in a child VM)" do
      {out, status} =
        HostileChild.run(:huge_tensor_grpc, [Python.python(), Python.script("hostile_grpc.py")])

      assert status == 0, "the child VM exited #{inspect(status)}:\n#{out}"
      assert out =~ ~r/^OK /m
      assert_node_answers()
    end
  end

  test "200 silent connections neither exhaust the node's descriptors nor lock out a real client" do
    start_supervised!(
      {Server,
       host: "127.0.0.1",
       port: 0,
       name: :hostile_silent,
       max_connections: 20,
       handshake_timeout: 1}
    )

    port = Server.port(:hostile_silent)
    me = self()

    # Connected concurrently (a connect may wait while the server is full);
    # each socket is handed to the test process, which keeps it open.
    sockets =
      1..200
      |> Task.async_stream(
        fn _ ->
          with {:ok, socket} <-
                 :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false], 10_000),
               :ok <- :gen_tcp.controlling_process(socket, me),
               do: {:ok, socket}
        end,
        max_concurrency: 200,
        timeout: 15_000,
        on_timeout: :kill_task
      )
      |> Enum.flat_map(fn
        {:ok, {:ok, socket}} -> [socket]
        _ -> []
      end)

    on_exit(fn -> Enum.each(sockets, &:gen_tcp.close/1) end)
    assert length(sockets) > 20, "only #{length(sockets)} of 200 connects succeeded"

    path = Path.join(System.tmp_dir!(), unique("hostile-fd"))
    assert {:ok, file} = File.open(path, [:write])
    File.close(file)
    File.rm(path)

    assert eventually("a Python Ping succeeds", 30_000, fn ->
             ping(port, Server.token(:hostile_silent), 3) == {:ok, "hostile"}
           end)

    # Every silent socket is closed by the server (after the handshake timeout,
    # once it got its turn); what it sent first (its HTTP/2 SETTINGS) is skipped.
    deadline = System.monotonic_time(:millisecond) + 60_000
    results = Enum.map(sockets, &recv_until_closed(&1, deadline))
    assert Enum.frequencies(results) == %{closed: length(sockets)}
    assert_node_answers()
  end

  defp recv_until_closed(socket, deadline) do
    case :gen_tcp.recv(socket, 0, max(deadline - System.monotonic_time(:millisecond), 0)) do
      {:ok, _} -> recv_until_closed(socket, deadline)
      {:error, reason} -> reason
    end
  end

  describe "a huge integer" do
    test "is refused at once, with a short message, for every numeric type" do
      sid = unique("bignum")
      {:ok, _} = SessionStore.create_session(sid)
      {:ok, _} = SessionStore.register_variable(sid, :f, :float, 1.0)
      {:ok, _} = SessionStore.register_variable(sid, :i, :integer, 1)
      # 1 MB of magnitude: written out in decimal it would take seconds on a scheduler.
      huge = 1 <<< 8_000_000

      for {name, kind} <- [f: :invalid_value, i: :invalid_value] do
        assert {:error, {^kind, message}} = SessionStore.update_variable(sid, name, huge)
        assert byte_size(message) < 300, message
      end

      # Bignums that fit a float still become one, and say what they were when refused.
      :ok = SessionStore.update_variable(sid, :f, 1 <<< 70)
      assert SessionStore.get_variable_value(sid, :f) == 1_180_591_620_717_411_303_424.0
      assert {:error, {:invalid_value, message}} = SessionStore.update_variable(sid, :i, 1 <<< 70)
      assert message =~ "1180591620717411303424"
      assert {:ok, %{version: 1}} = SessionStore.get_variable(sid, :i)
      SessionStore.delete_session(sid)
      assert_node_answers()
    end
  end

  describe "a supervisor restart of a port-0 server" do
    setup do
      name = :"hostile_restart_#{System.unique_integer([:positive])}"

      sup =
        start_supervised!(%{
          id: :hostile_sup,
          type: :supervisor,
          start:
            {Supervisor, :start_link,
             [
               [{Server, host: "127.0.0.1", port: 0, name: name, shutdown_grace: 1000}],
               [strategy: :one_for_one, max_restarts: 5]
             ]}
        })

      %{sup: sup, name: name, port: Server.port(name), token: Server.token(name)}
    end

    test "after a :kill comes back on the port it had, with the token it had", %{
      name: name,
      port: port,
      token: token
    } do
      assert {:ok, "hostile"} = ping(port, token)
      old = Process.whereis(name)
      Process.exit(old, :kill)

      new =
        eventually("the server is restarted", 5_000, fn ->
          (pid = Process.whereis(name)) && pid != old && pid
        end)

      assert Server.port(name) == port
      assert Server.token(name) == token
      assert {:ok, "hostile"} = ping(port, token)
      assert Process.alive?(new)
      assert_node_answers()
    end

    test "after terminate_child and restart_child comes back on the port it had", %{
      sup: sup,
      name: name,
      port: port,
      token: token
    } do
      assert :ok = Supervisor.terminate_child(sup, name)
      assert {:error, "UNAVAILABLE"} = ping(port, token, 2)
      assert {:ok, _pid} = Supervisor.restart_child(sup, name)
      assert Server.port(name) == port
      assert {:ok, "hostile"} = ping(port, token)
      assert_node_answers()
    end

    test "fails with a clear reason when its old port was taken meanwhile", %{
      sup: sup,
      name: name,
      port: port
    } do
      :ok = Supervisor.terminate_child(sup, name)
      {:ok, squatter} = :gen_tcp.listen(port, ip: {127, 0, 0, 1}, reuseaddr: true)

      try do
        assert {:error, {:invalid_argument, msg}} = Supervisor.restart_child(sup, name)
        assert msg =~ "the port this server had before its restart is taken"
        assert msg =~ "127.0.0.1:#{port}"
      after
        :gen_tcp.close(squatter)
      end

      assert {:ok, _} = Supervisor.restart_child(sup, name)
      assert Server.port(name) == port
    end
  end

  describe "option validation" do
    setup do
      Process.flag(:trap_exit, true)
      :ok
    end

    test "a count that is not a positive integer raises, naming the option" do
      assert_raise ArgumentError,
                   ~r/the :max_connections option must be a positive integer, got: 0/,
                   fn ->
                     Server.start_link(name: :hostile_bad, port: 0, max_connections: 0)
                   end

      assert_raise ArgumentError,
                   ~r/:max_sessions option must be a positive integer, got: -1/,
                   fn ->
                     Server.start_link(name: :hostile_bad, port: 0, max_sessions: -1)
                   end

      assert_raise ArgumentError, ~r/:max_batch option/, fn ->
        Server.start_link(name: :hostile_bad, port: 0, max_batch: 1.5)
      end

      assert_raise ArgumentError, ~r/:max_value_bytes option/, fn ->
        Server.start_link(name: :hostile_bad, port: 0, max_value_bytes: 1 <<< 64)
      end

      assert_raise ArgumentError,
                   ~r/:handshake_timeout option must be a positive number of seconds/,
                   fn ->
                     Server.start_link(name: :hostile_bad, port: 0, handshake_timeout: 0)
                   end

      assert_raise ArgumentError,
                   ~r/:idle_timeout option must be a non-negative number of seconds/,
                   fn ->
                     Server.start_link(name: :hostile_bad, port: 0, idle_timeout: :never)
                   end

      assert_raise ArgumentError, ~r/unknown option\(s\) \[:max_conections\]/, fn ->
        Server.start_link(name: :hostile_bad, port: 0, max_conections: 5)
      end

      refute Process.whereis(:hostile_bad)
      assert_node_answers()
    end

    test "settings that do not fit together fail to start with {:invalid_argument, message}" do
      assert {:error, {:invalid_argument, msg}} =
               Server.start_link(name: :hostile_bad, port: 0, max_message_bytes: 10)

      assert msg =~ "max_message_bytes must be at least 65536, got 10"

      assert {:error, {:invalid_argument, msg}} =
               Server.start_link(name: :hostile_bad, port: 0, max_value_bytes: 5_000_000)

      assert msg =~ "max_value_bytes 5000000 does not fit in max_message_bytes 4194304"

      assert {:error, {:invalid_argument, msg}} =
               Server.start_link(
                 name: :hostile_bad,
                 port: 0,
                 max_message_bytes: 100_000,
                 max_value_bytes: 100_000
               )

      assert msg =~ "max_value_bytes 100000 does not fit in max_message_bytes 100000"
      refute Process.whereis(:hostile_bad)
      assert_node_answers()
    end

    test "an idle_timeout of 0 (never) and small valid settings start" do
      {:ok, pid} =
        Server.start_link(
          name: :hostile_ok,
          port: 0,
          idle_timeout: 0,
          handshake_timeout: 0.5,
          max_message_bytes: 1 <<< 20,
          max_watchers: 1,
          max_watchers_per_connection: 1
        )

      assert {:ok, "hostile"} = ping(Server.port(:hostile_ok), Server.token(:hostile_ok))
      GenServer.stop(pid)
    end
  end

  describe "store limits set by a server" do
    setup do
      # Limits stay in the store after the server stops: restore the defaults
      # by starting (and stopping) a server with default options.
      on_exit(&restore_default_limits/0)
      :ok
    end

    test "the next create or register over a limit is {:resource_exhausted, message}, Elixir calls included" do
      sid = unique("limits")
      {:ok, _} = SessionStore.create_session(sid)
      on_exit(fn -> SessionStore.delete_session(sid) end)
      room = 3
      max_sessions = length(SessionStore.list_sessions()) + room

      {:ok, pid} =
        Server.start_link(
          name: :hostile_limits,
          port: 0,
          max_sessions: max_sessions,
          max_variables_per_session: 3
        )

      for name <- [:a, :b, :c],
          do: assert({:ok, _} = SessionStore.register_variable(sid, name, :integer, 1))

      assert {:error, {:resource_exhausted, msg}} =
               SessionStore.register_variable(sid, :d, :integer, 1)

      assert msg =~ "over the limit max_variables_per_session = 3"
      refute SessionStore.has_variable?(sid, :d)

      # Fill the remaining room (other sessions may expire meanwhile, so keep going until refused).
      {created, refusal} = create_until_refused(max_sessions + 10)
      on_exit(fn -> Enum.each(created, &SessionStore.delete_session/1) end)
      assert {:error, {:resource_exhausted, msg}} = refusal
      assert msg =~ "over the limit max_sessions = #{max_sessions}"
      assert length(created) >= room

      # The limits outlive the server that set them.
      GenServer.stop(pid)

      assert {:error, {:resource_exhausted, _}} =
               SessionStore.register_variable(sid, :d, :integer, 1)

      Enum.each(created, &SessionStore.delete_session/1)
      restore_default_limits()
      assert {:ok, _} = SessionStore.register_variable(sid, :d, :integer, 1)
      assert_node_answers()
    end
  end

  defp create_until_refused(budget, created \\ [])
  defp create_until_refused(0, created), do: {created, :budget_exhausted}

  defp create_until_refused(budget, created) do
    sid = unique("limits-fill")

    case SessionStore.create_session(sid) do
      {:ok, _} -> create_until_refused(budget - 1, [sid | created])
      refusal -> {created, refusal}
    end
  end

  defp restore_default_limits do
    {:ok, pid} = Server.start_link(name: :hostile_defaults, port: 0)
    GenServer.stop(pid)
  end
end
