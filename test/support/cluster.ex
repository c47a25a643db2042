defmodule Snakepit.Test.Cluster do
  @moduledoc """
  Peer nodes on loopback, each running the `:snakepit` application, for the
  cluster tests and bench. The functions below `start_peers/1` run on the
  peers (through `:erpc`), which load this module from the same code path.
  """

  alias Snakepit.Bridge.{Server, SessionStore}

  @doc """
  Starts one peer node per name, connected to this node (made a distributed
  node first, with `epmd` started if needed), and starts `:snakepit` on each.
  `app_env` is put in each peer's `:snakepit` environment first. The peers
  stop when the calling process exits. Returns `[{peer_pid, node}]`.
  """
  def start_peers(names, app_env \\ []) do
    for name <- names, do: start_peer(:"#{name}_#{System.unique_integer([:positive])}", app_env)
  end

  @doc """
  Starts one peer named exactly `name` (at 127.0.0.1); returns
  `{peer_pid, node}`. `erl_args`: more emulator flags (charlists).
  """
  def start_peer(name, app_env \\ [], erl_args \\ []) do
    distribute!()
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++ erl_args
    cookie = Atom.to_charlist(Node.get_cookie())

    {:ok, peer, node} =
      :peer.start_link(%{
        name: name,
        host: ~c"127.0.0.1",
        longnames: true,
        args: [~c"-setcookie", cookie | paths]
      })

    # A full mesh before the first test, as a settled cluster has (Erlang
    # would connect the others on first contact, not before).
    for other <- Node.list() -- [node], do: true = :erpc.call(node, Node, :connect, [other])

    for {key, value} <- app_env,
        do: :ok = :erpc.call(node, Application, :put_env, [:snakepit, key, value])

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:snakepit])
    {peer, node}
  end

  defp distribute! do
    unless Node.alive?() do
      epmd =
        System.find_executable("epmd") ||
          Path.wildcard(Path.join(:code.root_dir(), "erts-*/bin/epmd")) |> hd()

      {_, 0} = System.cmd(epmd, ["-daemon"])
      name = :"snakepit_test_#{System.unique_integer([:positive])}@127.0.0.1"
      {:ok, _} = Node.start(name, :longnames)
    end
  end

  @doc "The OS pid of `node`'s BEAM."
  def os_pid(node), do: :erpc.call(node, :os, :getpid, []) |> List.to_integer()

  @doc "Ends `node` at once, as a crash would (no application stops, no goodbyes)."
  def crash(node), do: :erpc.cast(node, :erlang, :halt, [137])

  # -- run on a peer ------------------------------------------------------------

  @doc "Starts a `Snakepit.Bridge.Server` not linked to the caller; returns its port."
  def serve(opts) do
    {:ok, pid} = Server.start_link(Keyword.merge([port: 0], opts))
    Process.unlink(pid)
    Server.port(Keyword.get(opts, :name, Server))
  end

  @doc """
  Starts a process on this node that watches with
  `SessionStore.watch_variables/3` and sends `{:watched, self(), message}` to
  `parent` for every message it receives. Returns `{pid, watch_result}`.
  `{:unwatch, from}` makes it unwatch and answer `{:unwatched, pid}`.
  """
  def watcher(parent, session_id, identifiers, opts) do
    answer = make_ref()
    caller = self()

    pid =
      spawn(fn ->
        result = SessionStore.watch_variables(session_id, identifiers, opts)
        send(caller, {answer, result})
        relay_to(parent, result)
      end)

    receive do
      {^answer, result} -> {pid, result}
    after
      10_000 -> raise "the watcher on #{node()} did not start"
    end
  end

  defp relay_to(parent, {:ok, ref} = result) do
    receive do
      {:unwatch, from} ->
        :ok = SessionStore.unwatch_variables(ref)
        send(from, {:unwatched, self()})

      message ->
        send(parent, {:watched, self(), message})
        relay_to(parent, result)
    end
  end

  defp relay_to(_parent, _error), do: :ok

  @doc """
  Starts a process on this node that watches `name` and, for each update,
  records its version and `:os.system_time(:nanosecond) - value` (values are
  the writer's clock stamps). At a negative value it sends
  `{:latencies, pid, [{version, ns}]}` to `parent` and ends. Returns its pid
  once the watch is live. For bench/cluster_latency.exs.
  """
  def latency_watcher(parent, session_id, name) do
    answer = make_ref()
    caller = self()

    pid =
      spawn(fn ->
        {:ok, ref} = SessionStore.watch_variables(session_id, [name])
        send(caller, answer)
        stamps(parent, ref, [])
      end)

    receive do
      ^answer -> pid
    after
      10_000 -> raise "the latency watcher on #{node()} did not start"
    end
  end

  defp stamps(parent, ref, acc) do
    receive do
      {:snakepit_variable_update, ^ref, %{value: value, version: version}} ->
        now = :os.system_time(:nanosecond)

        if value < 0 do
          SessionStore.unwatch_variables(ref)
          send(parent, {:latencies, self(), Enum.reverse(acc)})
        else
          stamps(parent, ref, [{version, now - value} | acc])
        end
    end
  end

  @doc """
  Starts a process on this node that receives `{:stamp, n, value}` messages
  sent straight to it and records `{n, :os.system_time(:nanosecond) - value}`;
  at a negative value it reports like `latency_watcher/3`. The floor a
  watch across nodes is compared with: one plain message, no store.
  """
  def stamp_receiver(parent), do: spawn(fn -> plain_stamps(parent, []) end)

  defp plain_stamps(parent, acc) do
    receive do
      {:stamp, n, value} ->
        now = :os.system_time(:nanosecond)

        if value < 0,
          do: send(parent, {:latencies, self(), Enum.reverse(acc)}),
          else: plain_stamps(parent, [{n, now - value} | acc])
    end
  end
end
