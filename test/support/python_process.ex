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
  Runs `bridge_client.py ADDRESS SESSION COMMAND ARGS...` to completion and
  decodes its one JSON line. Returns `{:ok, map}` or `{:error, map}`.
  """
  def client(port, session_id, command, args \\ []) do
    {out, status} =
      System.cmd(
        python(),
        [script("bridge_client.py"), "127.0.0.1:#{port}", session_id, command | args],
        env: [{"PYTHONUNBUFFERED", "1"}],
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
  """
  def start(args) do
    Port.open({:spawn_executable, python()}, [
      :binary,
      :exit_status,
      :use_stdio,
      :stderr_to_stdout,
      {:line, 65_536},
      {:args, args},
      {:env, [{~c"PYTHONUNBUFFERED", ~c"1"}]}
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
