defmodule Snakepit.Bridge.Cluster do
  @moduledoc """
  One bridge across the connected BEAM nodes of a cluster, over Erlang
  distribution (OTP's `:pg` and `:erpc`; no other protocol, no replication).

  Nothing needs configuring beyond connecting the nodes (`Node.connect/1`,
  `libcluster`, `--sname`/`--name` with the same cookie): every node that runs
  the `:snakepit` application joins. See the README's Clustering section.

  ## What lives where

  A session lives in the store of the node that created it (with
  `Snakepit.Bridge.SessionStore.create_session/2`, or a gRPC
  InitializeSession that reached that node) and nowhere else. Each node
  announces the ids it owns in a `:pg` group per session. Creating an id that
  another reachable node owns is refused with `{:error, {:already_exists, id}}`:
  creations of one id are serialised cluster-wide with a `:global` lock.

  Every `SessionStore` function tries this node's store first, at NIF speed.
  Only when the session is not here does it find the owner (its `:pg` group,
  else by asking every node once) and run the same function there with one
  `:erpc` call. If that node cannot be reached (down, or no answer within
  `:cluster_timeout` ms of the `:snakepit` application environment, default
  5000), the answer is `{:error, {:unavailable, node}}`.

  `SessionStore.list_sessions/0` lists the sessions of every reachable node;
  `SessionStore.stats/0` counts this node's store only.

  ## Watching across nodes

  `SessionStore.watch_variables/3` for a session on another node starts a
  relay process on the owner that watches there and forwards each message, in
  order, to the watching process, tagged with the reference the call
  returned. The messages and guarantees are those of a local watch. End it
  with `unwatch_variables/1` on the node where the watch was made (as for a
  local watch, the reference means nothing elsewhere).

  If the owner node goes down (or the relay dies), the watching process
  receives one last message and the watch ends:

      {:snakepit_variable_update, ref,
       %Snakepit.Bridge.VariableUpdate{
         update_type: :session_closed,
         source: :elixir,
         metadata: %{"reason" => "nodedown", "node" => "a@host"},
         variable_id: nil, name: nil, value: nil, version: nil
       }}

  (`"reason"` is `"relay_down"` when the node is up but the relay died.) A
  session closed the ordinary way sends `:session_closed` without a
  `"reason"`.

  ## gRPC on any node

  A Python worker connected to any node's `Snakepit.Bridge.Server` reaches
  every session of the cluster: the server serves local sessions itself and,
  while other nodes are connected, hands the others (and every
  InitializeSession, to keep ids unique) to this process, which runs the call
  on the owner.
  WatchVariables streams are relayed the same way, with flow control: the
  owner sends a bounded window of updates ahead of what the client has read,
  so a slow reader is coalesced at the owner like a local one. Give every
  node's server the same `:token` (for instance with `config :snakepit, token:`)
  so tokens minted on one node are valid on all.

  ## Node loss

  The sessions of a lost node are gone with it. Calls for them answer
  `{:error, {:unavailable, node}}` (gRPC UNAVAILABLE) while the node is still
  listed but does not answer, and the usual "no such session" answers
  (`{:error, {:session_not_found, id}}`, `{:error, :not_found}`, `false`;
  gRPC NOT_FOUND) once this node knows it is down. Watches end as above;
  relayed gRPC streams end with UNAVAILABLE. Sessions on other nodes are
  untouched. A node that restarts comes back with an empty store, so it
  serves nothing stale.
  """

  use GenServer

  alias Snakepit.Bridge.{Native, VariableUpdate}
  alias Snakepit.Bridge.Cluster.Relay
  alias Snakepit.Bridge.SessionStore.Local

  @scope :snakepit_bridge
  @watches :snakepit_bridge_remote_watches

  # Expiry (on the Rust side) and gRPC cleanups do not tell this process;
  # a periodic comparison with the store withdraws what is gone. Until then a
  # stale announcement costs one extra round trip, never a wrong answer: the
  # owner's store has the last word.
  @reconcile_every_ms 1000

  @doc false
  def scope, do: @scope

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  # -- routing ----------------------------------------------------------------

  @doc false
  # `result` is what `Local.fun(args)` answered here; if the session is not
  # here, the answer of the same call on its owner. (The caller makes the
  # local call itself: no dynamic dispatch on the local path.)
  # `args` starts with the session id, as every such function's do.
  @spec unless_here(term(), atom(), [term(), ...]) :: term()
  def unless_here({:error, {:session_not_found, _}} = miss, fun, [session_id | _] = args),
    do: remote(session_id, fun, args, miss)

  def unless_here(result, _fun, _args), do: result

  defp remote(session_id, fun, args, miss) do
    case owner(session_id) do
      :none ->
        miss

      {:ok, node} ->
        case call(node, Local, fun, args) do
          # A stale announcement: the session may live on another node now.
          {:error, {:session_not_found, _}} ->
            search_and_call(session_id, fun, args, miss, [node])

          result ->
            result
        end
    end
  end

  defp search_and_call(session_id, fun, args, miss, tried) do
    case search(peers() -- tried, session_id) do
      :none -> miss
      {:ok, node} -> call(node, Local, fun, args)
    end
  end

  @doc false
  # The node that owns `session_id`, other than this one: `{:ok, node}` or `:none`.
  @spec owner(String.t()) :: {:ok, node()} | :none
  def owner(session_id) do
    case peers() do
      [] ->
        :none

      peers ->
        announced = for pid <- members({:session, session_id}), node(pid) != node(), do: node(pid)

        case announced do
          [node | _] -> {:ok, node}
          # Not announced (yet): created an instant ago, or over gRPC before
          # the owner's announcement arrived here. Ask everyone once.
          [] -> search(peers, session_id)
        end
    end
  end

  # Without the application (say, `mix run --no-start`) there is no scope.
  defp members(group),
    do: if(Process.whereis(@scope), do: :pg.get_members(@scope, group), else: [])

  defp search([], _session_id), do: :none

  defp search(nodes, session_id) do
    nodes
    |> :erpc.multicall(Local, :session_exists, [session_id], timeout())
    |> Enum.zip(nodes)
    |> Enum.find_value(:none, fn
      {{:ok, true}, node} -> {:ok, node}
      _ -> nil
    end)
  end

  @doc false
  # The other nodes to ask. All connected ones, not only those whose bridge
  # this node's :pg has heard of yet: a node that just joined may already
  # own sessions. One without the bridge answers nothing useful, and is
  # ignored.
  @spec peers() :: [node()]
  def peers, do: Node.list()

  @doc false
  # `:erpc.call/5`, with an unreachable node as `{:error, {:unavailable, node}}`.
  @spec call(node(), module(), atom(), list()) :: term()
  def call(node, module, fun, args) do
    :erpc.call(node, module, fun, args, timeout())
  catch
    :error, {:erpc, reason} when reason in [:noconnection, :timeout] ->
      {:error, {:unavailable, node}}
  end

  @doc false
  @spec timeout() :: pos_integer()
  def timeout, do: Application.get_env(:snakepit, :cluster_timeout, 5000)

  # -- sessions -----------------------------------------------------------------

  @doc false
  # Creates a session here unless a reachable node owns the id.
  @spec create_session(String.t(), map(), pos_integer()) :: {:ok, map()} | {:error, term()}
  def create_session(session_id, metadata, ttl_ms) do
    create_unique(session_id, fn -> Local.create_session(session_id, metadata, ttl_ms) end)
  end

  @doc false
  # Runs `create` (which creates `session_id` here) unless a reachable node
  # owns the id; creations of one id run one at a time across the cluster.
  @spec create_unique(String.t(), (() -> result)) ::
          result | {:error, {:already_exists, String.t()}}
        when result: term()
  def create_unique(session_id, create) do
    case peers() do
      [] ->
        create.()

      peers ->
        :global.trans(
          {{__MODULE__, session_id}, self()},
          fn ->
            case search(peers, session_id) do
              {:ok, _} -> {:error, {:already_exists, session_id}}
              :none -> create.()
            end
          end,
          [node() | peers]
        )
    end
  end

  @doc false
  # Ids of the sessions of every reachable node, sorted.
  @spec list_sessions() :: [String.t()]
  def list_sessions do
    remote =
      peers()
      |> :erpc.multicall(Native, :list_sessions, [], timeout())
      |> Enum.flat_map(fn
        {:ok, ids} -> ids
        _ -> []
      end)

    Enum.sort(Enum.uniq(Native.list_sessions() ++ remote))
  end

  @doc false
  # Tells the cluster this node owns `session_id` (after creating it).
  @spec announce(String.t()) :: :ok
  def announce(session_id), do: tell({:announce, session_id})

  @doc false
  # Withdraws the announcement (after deleting it).
  @spec withdraw(String.t()) :: :ok
  def withdraw(session_id), do: tell({:withdraw, session_id})

  defp tell(message) do
    if Process.whereis(__MODULE__), do: GenServer.call(__MODULE__, message), else: :ok
  end

  # -- watching -----------------------------------------------------------------

  @doc false
  # A watch of a session on another node; the miss when no node has it.
  @spec watch(String.t(), list(), list(), pid(), boolean(), map(), term()) ::
          {:ok, reference()} | {:error, term()}
  def watch(session_id, identifiers, patterns, pid, include_initial, since, miss) do
    case owner(session_id) do
      :none ->
        miss

      {:ok, node} ->
        tag = make_ref()
        args = [session_id, identifiers, patterns, include_initial, since, pid, tag]

        case call(node, Relay, :start_watch, args) do
          {:ok, relay} ->
            GenServer.call(__MODULE__, {:watching, tag, pid, relay})
            {:ok, tag}

          error ->
            error
        end
    end
  end

  @doc false
  # Ends a watch of another node's session; `:not_remote` for any other ref.
  @spec unwatch(reference()) :: :ok | :not_remote
  def unwatch(ref) do
    case :ets.whereis(@watches) != :undefined and :ets.take(@watches, ref) do
      [{^ref, relay, monitor, _pid}] ->
        GenServer.cast(__MODULE__, {:forget, monitor})
        Relay.stop_watch(relay)

      _ ->
        :not_remote
    end
  end

  # -- the process --------------------------------------------------------------

  @impl true
  def init(_opts) do
    :ets.new(@watches, [:named_table, :public, :set])
    Enum.each(Native.list_sessions(), &join/1)
    # Also works before the node is distributed: it reports the node going up.
    :ok = :net_kernel.monitor_nodes(true)
    forward_if_connected()
    Process.send_after(self(), :reconcile, @reconcile_every_ms)
    # Relay monitor => watch tag; the table holds the rest of each watch.
    {:ok, %{relays: %{}}}
  end

  @impl true
  def handle_call({:announce, session_id}, _from, state) do
    join(session_id)
    {:reply, :ok, state}
  end

  def handle_call({:withdraw, session_id}, _from, state) do
    :pg.leave(@scope, {:session, session_id}, self())
    {:reply, :ok, state}
  end

  def handle_call({:watching, tag, pid, relay}, _from, state) do
    # Monitored here, not by the watcher, which is the caller's process and
    # must only ever receive the watch's messages.
    monitor = Process.monitor(relay)
    :ets.insert(@watches, {tag, relay, monitor, pid})
    {:reply, :ok, put_in(state.relays[monitor], tag)}
  end

  @impl true
  def handle_cast({:forget, monitor}, state) do
    Process.demonitor(monitor, [:flush])
    {:noreply, %{state | relays: Map.delete(state.relays, monitor)}}
  end

  @impl true
  def handle_info(:reconcile, state) do
    # Announcements matter only to other nodes; a node that becomes
    # distributed later is brought in step by the first pass after.
    if Node.alive?(), do: reconcile()
    Process.send_after(self(), :reconcile, @reconcile_every_ms)
    {:noreply, state}
  end

  def handle_info({event, _node}, state) when event in [:nodeup, :nodedown] do
    forward_if_connected()
    {:noreply, state}
  end

  def handle_info({:snakepit_forward, reply, method, session_id, request, binary}, state) do
    spawn(fn ->
      Native.cluster_reply(reply, Relay.forward(method, session_id, request, binary))
    end)

    {:noreply, state}
  end

  def handle_info({:snakepit_forward_watch, stream, session_id, request, binary}, state) do
    spawn(fn -> Relay.sink(stream, session_id, request, binary) end)
    {:noreply, state}
  end

  def handle_info({:DOWN, monitor, :process, relay, reason}, state) do
    {tag, relays} = Map.pop(state.relays, monitor)

    # Gone from the table: unwatched an instant ago, nobody to tell.
    with [{^tag, ^relay, ^monitor, pid}] when reason != :normal <- :ets.take(@watches, tag) do
      send(pid, {:snakepit_variable_update, tag, lost(relay, reason)})
    end

    {:noreply, %{state | relays: relays}}
  end

  @impl true
  def terminate(_reason, _state), do: Native.cluster_unregister()

  defp lost(relay, reason) do
    why = if reason == :noconnection, do: "nodedown", else: "relay_down"

    %VariableUpdate{
      source: :elixir,
      update_type: :session_closed,
      timestamp: DateTime.utc_now(),
      metadata: %{"reason" => why, "node" => Atom.to_string(node(relay))}
    }
  end

  # gRPC servers hand this process what their store lacks only while other
  # nodes are connected: a lone node serves every call itself, as if there
  # were no cluster layer.
  defp forward_if_connected do
    if Node.list() == [], do: Native.cluster_unregister(), else: Native.cluster_register(self())
  end

  defp join(session_id) do
    group = {:session, session_id}
    # Joining twice would make two memberships; only this process joins.
    unless self() in :pg.get_local_members(@scope, group), do: :pg.join(@scope, group, self())
  end

  defp reconcile do
    held = MapSet.new(Native.list_sessions())

    announced = for {:session, id} <- :pg.which_local_groups(@scope), into: MapSet.new(), do: id

    Enum.each(MapSet.difference(announced, held), &:pg.leave(@scope, {:session, &1}, self()))
    Enum.each(MapSet.difference(held, announced), &join/1)
  end
end
