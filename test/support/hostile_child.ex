defmodule Snakepit.Test.HostileChild do
  @moduledoc """
  Runs a hostile check in a separate BEAM OS process, for inputs that once
  aborted the whole VM: a regression then fails one test instead of killing
  the test runner.

  `run/3` (in the test VM) starts `elixir` with this project's compiled
  modules on its code path and calls one of the `child_*` functions of this
  module there. A child function prints `OK ...` and halts with status 0 when
  every check holds, or prints `FAIL ...` and halts with status 1.
  """

  import Bitwise

  alias Snakepit.Bridge.{Server, SessionStore}

  # 2**40 elements: the shape product of the tensor that used to abort the VM.
  @huge 1_099_511_627_776

  @doc """
  Runs `child_<name>(args...)` in a fresh `elixir` OS process. Returns
  `{output, exit_status}`; a child still running after `timeout` ms is
  killed and reported with status `:timeout`.
  """
  @spec run(atom(), [String.t()], timeout()) :: {String.t(), non_neg_integer() | :timeout}
  def run(name, args \\ [], timeout \\ 60_000) do
    ebin = Path.dirname(:code.which(__MODULE__))
    call = "#{inspect(__MODULE__)}.child_#{name}(#{Enum.map_join(args, ", ", &inspect/1)})"

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-pa", ebin, "-e", call]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    deadline = System.monotonic_time(:millisecond) + timeout
    collect(port, os_pid, deadline, [])
  end

  defp collect(port, os_pid, deadline, acc) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, data}} -> collect(port, os_pid, deadline, [acc, data])
      {^port, {:exit_status, status}} -> {IO.iodata_to_binary(acc), status}
    after
      left ->
        # Only the child this call started, by its OS pid.
        System.cmd("kill", ["-9", Integer.to_string(os_pid)])
        {IO.iodata_to_binary(acc), :timeout}
    end
  end

  # -- run inside the child ------------------------------------------------------

  @doc "Child: tensors with impossible shapes through the NIF are refused, the store unchanged."
  @spec child_huge_tensor_nif() :: no_return()
  def child_huge_tensor_nif do
    checked(fn ->
      sid = "hostile-nif-#{System.unique_integer([:positive])}"
      {:ok, _} = SessionStore.create_session(sid)
      {:ok, _} = SessionStore.register_variable(sid, :t, :tensor, %{shape: [2], data: [1.0, 2.0]})
      {:ok, before} = SessionStore.get_variable(sid, :t)

      # Shapes whose product no store could hold: each must be a refusal with a reason.
      for shape <- [[@huge], [@huge, 1], [1 <<< 32, 1 <<< 32], [1 <<< 21, 1 <<< 21, 1 <<< 21]] do
        value = %{shape: shape, data: []}
        refused!({:register, shape}, SessionStore.register_variable(sid, :huge, :tensor, value))
        refused!({:update, shape}, SessionStore.update_variable(sid, :t, value))
        refused!({:put, shape}, SessionStore.put_variable(sid, "t", value))

        case SessionStore.update_variables(sid, %{t: value}) do
          {:ok, %{t: {:error, reason}}} -> refused!({:batch, shape}, {:error, reason})
          other -> fail!({:batch, shape}, other)
        end

        case SessionStore.update_variables(sid, [{"t", value}], atomic: true) do
          {:error, {:batch_failed, failed}} when map_size(failed) == 1 ->
            refused!({:atomic, shape}, {:error, failed |> Map.values() |> hd()})

          other ->
            fail!({:atomic, shape}, other)
        end
      end

      # Shapes that are nonsense rather than huge: a refusal or ArgumentError.
      for shape <- [
            [1 <<< 63],
            [1 <<< 64],
            [1 <<< 1000],
            [-1],
            [2, -3],
            [1.5],
            ["x"],
            [nil],
            :huge
          ] do
        value = %{shape: shape, data: []}

        answered!({:register, shape}, fn ->
          SessionStore.register_variable(sid, :huge, :tensor, value)
        end)

        answered!({:update, shape}, fn -> SessionStore.update_variable(sid, :t, value) end)
      end

      {:ok, after_all} = SessionStore.get_variable(sid, :t)

      unless after_all.version == before.version and after_all.value == before.value,
        do: fail!(:store_changed, {before, after_all})

      if SessionStore.has_variable?(sid, :huge),
        do: fail!(:huge_registered, SessionStore.get_variable(sid, :huge))

      "tensor t still at version #{after_all.version}"
    end)
  end

  @doc """
  Child: the same tensor over gRPC (RegisterVariable and SetVariable, JSON and
  binary paths) against a server embedded in the child's BEAM.
  """
  @spec child_huge_tensor_grpc(String.t(), String.t()) :: no_return()
  def child_huge_tensor_grpc(python, script) do
    checked(fn ->
      {:ok, _} = Server.start_link(host: "127.0.0.1", port: 0, name: :hostile_child_server)
      port = Server.port(:hostile_child_server)
      sid = "hostile-grpc-#{System.unique_integer([:positive])}"
      {:ok, _} = SessionStore.create_session(sid)
      {:ok, _} = SessionStore.register_variable(sid, :t, :tensor, %{shape: [2], data: [1.0, 2.0]})
      {:ok, before} = SessionStore.get_variable(sid, :t)

      {out, status} =
        System.cmd(python, [script, "127.0.0.1:#{port}", "huge_tensor", sid],
          env:
            Snakepit.Test.Python.env(%{
              "SNAKEPIT_BRIDGE_TOKEN" => Server.token(:hostile_child_server)
            }),
          stderr_to_stdout: true
        )

      results =
        with 0 <- status,
             line when is_binary(line) <- out |> String.split("\n", trim: true) |> List.last(),
             {:ok, map} <- Snakepit.Test.JSON.decode(line) do
          map
        else
          _ -> fail!(:python, {status, out})
        end

      for call <- ["register_json", "register_binary", "set_json", "set_binary"] do
        case results[call] do
          %{"code" => code} when code in ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"] -> :ok
          %{"ok" => %{"success" => false, "error_message" => msg}} when msg != "" -> :ok
          other -> fail!(call, other)
        end
      end

      unless results["ping_after"] == %{"ok" => "after"},
        do: fail!(:ping_after, results["ping_after"])

      {:ok, after_all} = SessionStore.get_variable(sid, :t)

      unless after_all.version == before.version and after_all.value == before.value,
        do: fail!(:store_changed, {before, after_all})

      for name <- [:huge_json, :huge_binary],
          SessionStore.has_variable?(sid, name),
          do: fail!({:registered, name}, SessionStore.get_variable(sid, name))

      inspect(Map.take(results, ["register_json", "set_binary"]))
    end)
  end

  defp refused!(_what, {:error, {kind, message}})
       when kind in [:invalid_value, :resource_exhausted] and is_binary(message),
       do: :ok

  defp refused!(what, other), do: fail!(what, other)

  defp answered!(what, fun) do
    case fun.() do
      {:error, _} -> :ok
      other -> fail!(what, other)
    end
  rescue
    ArgumentError -> :ok
  end

  defp fail!(what, got), do: throw({:fail, what, got})

  defp checked(fun) do
    {line, status} =
      try do
        {"OK " <> fun.(), 0}
      catch
        :throw, {:fail, what, got} -> {"FAIL #{inspect(what)}: #{inspect(got, limit: 50)}", 1}
        kind, reason -> {"FAIL #{Exception.format(kind, reason, __STACKTRACE__)}", 1}
      end

    IO.puts(line)
    System.halt(status)
  end
end
