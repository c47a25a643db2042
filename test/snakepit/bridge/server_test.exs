defmodule Snakepit.Bridge.ServerTest do
  # Not async: these tests start and stop listeners and real Python processes.
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.{Server, SessionStore}
  alias Snakepit.Test.Python

  @moduletag timeout: 120_000

  defp start_server(opts \\ []) do
    start_supervised!({Server, Keyword.merge([host: "127.0.0.1", port: 0], opts)})
    Server.port()
  end

  defp unique(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"

  test "a Python process pings and initializes a session that Elixir then sees" do
    port = start_server()
    sid = unique("from-python")

    assert {:ok, %{"ping" => "hello", "initialized" => true}} =
             Python.client(port, sid, "ping_and_initialize", ["hello"], Python.server_env())

    assert {:ok, %{id: ^sid, metadata: %{"by" => "python"}}} = SessionStore.get_session(sid)
  end

  test "a session Elixir creates is visible to Python's GetSession" do
    port = start_server()
    sid = unique("from-elixir")
    {:ok, _} = SessionStore.create_session(sid, metadata: %{"by" => "elixir"})
    {:ok, _} = SessionStore.register_variable(sid, :x, :integer, 1)

    assert {:ok,
            %{"session_id" => ^sid, "metadata" => %{"by" => "elixir"}, "variable_count" => 1}} =
             Python.client(port, sid, "get_session", [], Server.worker_env(sid))

    missing = unique("missing")

    assert {:error, %{"error" => "SessionNotFoundError", "code" => "NOT_FOUND"}} =
             Python.client(port, missing, "get_session", [], Server.worker_env(missing))
  end

  test "Elixir writes, Python reads the same value and version" do
    port = start_server()
    sid = unique("e2p")
    {:ok, _} = SessionStore.create_session(sid)

    {:ok, _} =
      SessionStore.register_variable(sid, :temperature, :float, 0.5,
        constraints: %{min: 0, max: 2}
      )

    :ok = SessionStore.update_variable(sid, :temperature, :infinity)
    :ok = SessionStore.update_variable(sid, :temperature, 1.25)

    {:ok, _} =
      SessionStore.register_variable(sid, :t, :tensor, %{shape: [2, 1], data: [[1], [2]]})

    assert {:ok, %{"value" => 1.25, "version" => 3, "type" => "float", "source" => "elixir"}} =
             Python.client(port, sid, "get_variable", ["temperature"], Server.worker_env(sid))

    assert {:ok, %{"value" => %{"shape" => [2, 1], "data" => [1.0, 2.0]}, "version" => 1}} =
             Python.client(port, sid, "get_variable", ["t"], Server.worker_env(sid))
  end

  test "Python writes, Elixir reads it with source python; bad values are refused" do
    port = start_server()
    sid = unique("p2e")
    {:ok, _} = SessionStore.create_session(sid)

    {:ok, _} =
      SessionStore.register_variable(sid, :strategy, :choice, "greedy",
        constraints: %{choices: ["greedy", "beam"]}
      )

    assert {:ok, %{"version" => 2}} =
             Python.client(
               port,
               sid,
               "update_variable",
               ["strategy", ~s("beam")],
               Server.worker_env(sid)
             )

    assert {:ok, %{value: "beam", version: 2, source: :python}} =
             SessionStore.get_variable(sid, :strategy)

    assert {:error, %{"error" => "ValidationError", "message" => msg}} =
             Python.client(
               port,
               sid,
               "update_variable",
               ["strategy", ~s("sample")],
               Server.worker_env(sid)
             )

    assert msg =~ "not one of the choices"
    assert {:ok, %{value: "beam", version: 2}} = SessionStore.get_variable(sid, :strategy)
  end

  test "stopping the server ends a Python client's calls with UNAVAILABLE, and the port can be bound again" do
    port = start_server()
    sid = unique("stop")

    token = Server.token()

    py =
      Python.start(
        [Python.script("bridge_client.py"), "127.0.0.1:#{port}", sid, "ping_then_wait"],
        Python.server_env()
      )

    assert Python.next_line(py) =~ ~s("ping": "before")

    :ok = stop_supervised(Server)
    Python.send_line(py, "go")
    line = Python.next_line(py)
    assert line =~ ~s("code": "UNAVAILABLE"), line
    assert Python.wait_exit(py) == 3

    # The listener is released: the same port can be bound by a restarted server.
    start_supervised!({Server, host: "127.0.0.1", port: port})
    assert Server.port() == port
    # Restarted under the same name, it kept its generated token.
    assert Server.token() == token

    assert {:ok, %{"ping" => "again"}} =
             Python.client(port, unique("again"), "ping_and_initialize", ["again"], %{
               "SNAKEPIT_BRIDGE_TOKEN" => token
             })
  end

  test "two servers under different names, each with its own port" do
    start_supervised!({Server, host: "127.0.0.1", port: 0})
    start_supervised!({Server, name: :second_bridge, host: "127.0.0.1", port: 0})
    assert is_integer(Server.port()) and is_integer(Server.port(:second_bridge))
    assert Server.port() != Server.port(:second_bridge)
  end

  test "a port that cannot be bound fails to start with the reason" do
    port = start_server()
    Process.flag(:trap_exit, true)

    assert {:error, {:invalid_argument, msg}} =
             Server.start_link(name: :clash, host: "127.0.0.1", port: port)

    assert msg =~ "cannot listen on 127.0.0.1:#{port}"
  end
end
