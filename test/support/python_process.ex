defmodule Snakepit.Test.Python do
  @moduledoc """
  Runs real Python processes (the project's venv, with `snakepit_bridge`
  installed) for end-to-end tests.
  """

  @support Path.expand("python", __DIR__)

  @doc "The interpreter: `$SNAKEPIT_PYTHON`, else the repo's `.venv`."
  def python do
    System.get_env("SNAKEPIT_PYTHON") || Path.expand("../../.venv/bin/python", __DIR__)
  end

  @doc "Path of a script in test/support/python."
  def script(name), do: Path.join(@support, name)

  @doc """
  The environment of a test Python process: `extra` (a map or list of string
  pairs, such as `Snakepit.Bridge.Server.worker_env/2`), and nothing of the
  bridge's variables that this BEAM's own environment might hold.
  """
  def env(extra \\ []) do
    unset =
      for name <- ~w(SNAKEPIT_BRIDGE_ADDRESS SNAKEPIT_BRIDGE_TOKEN SNAKEPIT_BRIDGE_SESSION
                     SNAKEPIT_BRIDGE_ROOT_CERTIFICATES),
          do: {name, nil}

    [{"PYTHONUNBUFFERED", "1"} | unset]
    |> Map.new()
    |> Map.merge(Map.new(extra))
    |> Map.to_list()
  end

  @doc """
  The token environment for a client of the server named `server`: its
  server token (for calls no session token allows, like Ping).
  """
  def server_env(server \\ Snakepit.Bridge.Server) do
    %{"SNAKEPIT_BRIDGE_TOKEN" => Snakepit.Bridge.Server.token(server)}
  end

  @doc """
  Runs `bridge_client.py ADDRESS SESSION COMMAND ARGS...` to completion and
  decodes its one JSON line. Returns `{:ok, map}` or `{:error, map}`.
  `env` carries the token (see `env/1`): `Server.worker_env(session_id)`
  for the session's calls, `server_env/1` for Ping.
  """
  def client(port, session_id, command, args \\ [], env \\ []) do
    {out, status} =
      System.cmd(
        python(),
        [script("bridge_client.py"), "127.0.0.1:#{port}", session_id, command | args],
        env: env(env),
        stderr_to_stdout: true
      )

    case {status, last_json(out)} do
      {0, {:ok, map}} -> {:ok, map}
      {3, {:ok, map}} -> {:error, map}
      _ -> raise "python #{command} exited #{status}:\n#{out}"
    end
  end

  defp last_json(out) do
    out
    |> String.split("\n", trim: true)
    |> List.last()
    |> case do
      nil -> :none
      line -> json_decode(line)
    end
  end

  @doc """
  Starts a long-running Python process on a port; lines arrive as messages.
  `env` as for `client/5`.
  """
  def start(args, env \\ []) do
    env =
      for {name, value} <- env(env),
          do: {String.to_charlist(name), if(value, do: String.to_charlist(value), else: false)}

    Port.open({:spawn_executable, python()}, [
      :binary,
      :exit_status,
      :use_stdio,
      :stderr_to_stdout,
      {:line, 65_536},
      {:args, args},
      {:env, env}
    ])
  end

  @doc "Waits for the next complete line from `port`."
  def next_line(port, timeout \\ 15_000) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        line

      {^port, {:exit_status, status}} ->
        raise "python exited with status #{status} before printing a line"
    after
      timeout -> raise "no line from python within #{timeout} ms"
    end
  end

  @doc "Waits for the process to exit; returns its status."
  def wait_exit(port, timeout \\ 15_000) do
    receive do
      {^port, {:exit_status, status}} -> status
    after
      timeout -> raise "python did not exit within #{timeout} ms"
    end
  end

  @doc "Sends one line to the process's stdin."
  def send_line(port, line), do: Port.command(port, line <> "\n")

  @doc false
  def json_decode(text), do: Snakepit.Test.JSON.decode(text)
end
