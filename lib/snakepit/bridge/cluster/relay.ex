defmodule Snakepit.Bridge.Cluster.Relay do
  @moduledoc false
  # The processes that carry calls and watches between the node a caller is
  # on and the node that owns the session. A NIF can only send to local
  # pids, so a watch of a session on node A for someone on node B always has
  # a relay on A: it is the subscription's local receiver and forwards, in
  # order, to B.
  #
  # Elixir watches: `start_watch/7` (on A) → relay → the watching pid on B.
  # gRPC calls that reached B: `forward/4` (on B) → `serve/4` (on A, one
  # :erpc call). gRPC watch streams: `sink/4` (on B, feeding the stream) ⇄
  # `wire_relay` (on A, feeding the sink), with acknowledgements flowing back
  # so at most a window of updates is in flight.

  alias Snakepit.Bridge.{Cluster, Native}

  # -- Elixir watches -------------------------------------------------------------

  @doc false
  # On the owner: starts a relay watching for `watcher` (on another node),
  # tagging each message with `tag`. `{:ok, relay}` or the watch's error.
  def start_watch(session_id, identifiers, patterns, include_initial, since, watcher, tag) do
    start(fn reply ->
      Process.monitor(watcher)

      case Native.watch_variables(
             session_id,
             identifiers,
             patterns,
             self(),
             include_initial,
             since
           ) do
        {:ok, ref} ->
          reply.({:ok, self()})
          watch_loop(ref, watcher, tag)

        error ->
          reply.(error)
      end
    end)
  end

  defp watch_loop(ref, watcher, tag) do
    receive do
      {:snakepit_variable_update, ^ref, update} ->
        send(watcher, {:snakepit_variable_update, tag, update})
        # The last update of a watch: the subscription has ended.
        unless update.update_type == :session_closed, do: watch_loop(ref, watcher, tag)

      {:snakepit_unwatch, from, mref} ->
        Native.unwatch_variables(ref)
        # Sent from here, after every update this relay forwarded: when the
        # caller is the watcher, they are all in its mailbox by then.
        send(from, {mref, :ok})

      {:DOWN, _, :process, ^watcher, _} ->
        Native.unwatch_variables(ref)
    end
  end

  @doc false
  # From the watcher's node: ends the relay's watch; `:ok` also when the
  # relay or its node is gone.
  def stop_watch(relay) do
    mref = Process.monitor(relay)
    send(relay, {:snakepit_unwatch, self(), mref})

    receive do
      {^mref, :ok} -> Process.demonitor(mref, [:flush])
      {:DOWN, ^mref, _, _, _} -> :ok
    after
      # A node cut off but not yet known to be down: do not wait for it. The
      # relay ends by itself when the connection is declared lost (it
      # monitors the watcher); if the connection recovers first, what it
      # forwarded meanwhile may still arrive.
      Cluster.timeout() -> Process.demonitor(mref, [:flush])
    end

    :ok
  end

  # Spawns `body`, which answers through the function it is given, and
  # waits for that answer (or the process's death).
  defp start(body) do
    parent = self()
    answer = make_ref()
    {pid, monitor} = spawn_monitor(fn -> body.(&send(parent, {answer, &1})) end)

    receive do
      {^answer, result} ->
        Process.demonitor(monitor, [:flush])
        result

      {:DOWN, ^monitor, :process, ^pid, reason} ->
        {:error, {:unavailable, "the relay on #{node()} exited: #{inspect(reason)}"}}
    end
  end

  # -- gRPC calls -----------------------------------------------------------------

  @doc false
  # On the node the client reached: the answer to a gRPC call about a
  # session this node does not hold, for `Native.cluster_reply/2`.
  def forward(:initialize_session, session_id, request, binary) do
    Cluster.create_unique(session_id, fn ->
      serve(:initialize_session, session_id, request, binary)
    end)
  end

  def forward(method, session_id, request, binary) do
    case Cluster.owner(session_id) do
      # Nobody has it: this node's store gives the usual NOT_FOUND.
      :none ->
        Native.cluster_serve(method, request, binary)

      {:ok, node} ->
        node
        |> Cluster.call(__MODULE__, :serve, [method, session_id, request, binary])
        |> reachable()
    end
  end

  @doc false
  # On the owner: serves a call that reached another node.
  def serve(method, session_id, request, binary) do
    result = Native.cluster_serve(method, request, binary)

    case {method, result} do
      {:initialize_session, {:ok, _}} -> Cluster.announce(session_id)
      {:cleanup_session, {:ok, _}} -> Cluster.withdraw(session_id)
      _ -> :ok
    end

    result
  end

  defp reachable({:error, {:unavailable, node}}) when is_atom(node),
    do: {:error, {:unavailable, "node #{node}, which owns the session, cannot be reached"}}

  defp reachable(result), do: result

  # -- gRPC watch streams ---------------------------------------------------------

  @doc false
  # On the node the client reached: feeds a WatchVariables stream from the
  # owner's relay until either side ends.
  def sink(stream, session_id, request, binary) do
    with {:ok, node} <- Cluster.owner(session_id),
         {:ok, relay} <-
           reachable(
             Cluster.call(node, __MODULE__, :start_wire_watch, [
               session_id,
               request,
               binary,
               self()
             ])
           ) do
      monitor = Process.monitor(relay)
      :ok = Native.cluster_stream_open(stream, self())
      sink_loop(stream, relay, monitor)
    else
      :none -> Native.cluster_stream_close(stream, {:error, {:session_not_found, session_id}})
      refusal -> Native.cluster_stream_close(stream, refusal)
    end
  end

  defp sink_loop(stream, relay, monitor) do
    receive do
      {:snakepit_wire_updates, _, updates} ->
        Native.cluster_stream_push(stream, updates)
        sink_loop(stream, relay, monitor)

      {:snakepit_wire_end, _} ->
        Native.cluster_stream_close(stream, :ok)

      {:snakepit_forward_ack, _, n} ->
        send(relay, {:snakepit_wire_ack, n})
        sink_loop(stream, relay, monitor)

      {:snakepit_forward_cancel, _} ->
        send(relay, :snakepit_wire_cancel)

      {:DOWN, ^monitor, :process, ^relay, reason} ->
        message =
          if reason == :noconnection,
            do: "node #{node(relay)}, which owns the session, went down",
            else: "the watch relay on node #{node(relay)} exited: #{inspect(reason)}"

        Native.cluster_stream_close(stream, {:error, {:unavailable, message}})
    end
  end

  @doc false
  # On the owner: watches for a sink on another node, sending encoded
  # updates. `{:ok, relay}` or the refusal as a status.
  def start_wire_watch(session_id, request, binary, sink) do
    start(fn reply ->
      Process.monitor(sink)

      case Native.cluster_wire_watch(session_id, request, binary, self()) do
        {:ok, ref} ->
          reply.({:ok, self()})
          wire_loop(ref, sink)

        refusal ->
          reply.(refusal)
      end
    end)
  end

  defp wire_loop(ref, sink) do
    receive do
      {:snakepit_wire_updates, ^ref, _} = updates ->
        send(sink, updates)
        wire_loop(ref, sink)

      {:snakepit_wire_end, ^ref} = ended ->
        send(sink, ended)

      {:snakepit_wire_ack, n} ->
        Native.cluster_wire_ack(ref, n)
        wire_loop(ref, sink)

      :snakepit_wire_cancel ->
        Native.cluster_wire_cancel(ref)

      {:DOWN, _, :process, ^sink, _} ->
        Native.cluster_wire_cancel(ref)
    end
  end
end
