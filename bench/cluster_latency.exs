# Push latency across nodes: an Elixir write on node A (this BEAM) → an
# Elixir watcher on node B, and → a Python watcher connected to B's gRPC
# server; each beside the same path within node A, in one run.
#
#     MIX_ENV=test mix run bench/cluster_latency.exs           # 2,000 updates 1 ms apart per path (~1 min)
#     MIX_ENV=test mix run bench/cluster_latency.exs --quick   # 50 updates per path
#     MIX_ENV=test mix run bench/cluster_latency.exs --updates 5000 --json
#
# MIX_ENV=test: node B is an OTP :peer started with Snakepit.Test.Cluster
# (test/support), which both nodes load from the same code path.

Code.require_file("support.exs", __DIR__)
Code.require_file("push_latency.exs", __DIR__)

defmodule Snakepit.Bench.ClusterLatency do
  @moduledoc """
  What a hop over Erlang distribution adds to a push.

  This BEAM becomes node A (distributed, on loopback, `epmd` started if
  needed) and starts node B as an OTP `:peer`; both run `:snakepit`. A owns
  a session with an integer variable `stamp`. Four paths run in turn, each
  with `warmup + updates` writes on A paced `interval_ms` apart, every value
  being `:os.system_time(:nanosecond)` read just before the write, then `-1`
  to end the phase; the receiver computes its clock minus the value on
  receipt (one machine, one clock):

    * Elixir, same node: a process on A with `SessionStore.watch_variables/3`.
    * Elixir, across nodes: the same on B (a relay on A forwards each message).
    * Python, same node: `bench/push_receiver.py` (the package's
      `watch_variables` iterator) connected to A's server, as
      `bench/push_latency.exs` runs it.
    * Python, across nodes: the same receiver connected to B's server, which
      relays the stream from A.

  Beside them, the floor of the hop: plain messages from a process on A to
  one on B, on the same schedule, carrying the stamp.

  Servers run with `auth: false` so the figures are the transport's. An
  update a receiver did not get by itself (coalesced) is not counted.
  `run/1` returns a map; `format/1` renders it with the cross-node / same-node
  ratio of p50 and p99.
  """

  alias Snakepit.Bench.{PushLatency, Support}
  alias Snakepit.Bridge.SessionStore
  alias Snakepit.Test.Cluster

  @no_spin [~c"+sbwt", ~c"none", ~c"+sbwtdcpu", ~c"none", ~c"+sbwtdio", ~c"none"]

  @doc "Runs every path; options `:updates`, `:warmup`, `:interval_ms`, `:progress`."
  def run(opts \\ []) do
    updates = Support.positive!(opts, :updates, 2000)
    warmup = Keyword.get(opts, :warmup, 100)
    interval_ms = Support.positive!(opts, :interval_ms, 1)
    progress = Keyword.get(opts, :progress, fn _ -> :ok end)
    started = System.monotonic_time(:millisecond)

    progress.("starting node B")
    # Two BEAMs, a Python process and tokio share the machine's cores: node
    # B's schedulers must not spin while idle (A's: see the header).
    {peer, b} = Cluster.start_peer(:"bench_b_#{System.unique_integer([:positive])}", [], @no_spin)
    b_port = :erpc.call(b, Cluster, :serve, [[auth: false]])

    sid = "bench-cluster-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)
    {:ok, _} = SessionStore.register_variable(sid, :stamp, :integer, 0)

    try do
      elixir =
        for {path, node} <- [same_node: node(), cross_node: b], into: %{} do
          progress.("Elixir watcher, #{path}: #{warmup} + #{updates} updates")
          {path, elixir_phase(node, sid, warmup, updates, interval_ms)}
        end

      progress.("plain messages to node B: #{warmup} + #{updates}")
      plain = plain_phase(b, warmup, updates, interval_ms)

      python_opts = [
        updates: updates,
        warmup: warmup,
        interval_ms: interval_ms,
        pings: 50,
        modes: [:client]
      ]

      python =
        for {path, port_opt} <- [same_node: [], cross_node: [port: b_port]], into: %{} do
          progress.("Python watcher, #{path}: #{warmup} + #{updates} updates")
          r = PushLatency.run(python_opts ++ port_opt)
          {path, Map.take(r.results.client.latency_us, [:p50, :p99, :count])}
        end

      %{
        unit: :us,
        updates: updates,
        warmup: warmup,
        interval_ms: interval_ms,
        elixir: elixir,
        python: python,
        plain_message: plain,
        machine: Support.machine(),
        elapsed_ms: System.monotonic_time(:millisecond) - started
      }
    after
      SessionStore.delete_session(sid)
      :peer.stop(peer)
    end
  end

  defp elixir_phase(node, sid, warmup, updates, interval_ms) do
    watcher = :erpc.call(node, Cluster, :latency_watcher, [self(), sid, "stamp"])
    {:ok, %{version: v0}} = SessionStore.get_variable(sid, :stamp)
    write(sid, warmup + updates, interval_ms, :erlang.monotonic_time(:millisecond) + 1)

    receive do
      {:latencies, ^watcher, pairs} ->
        samples = for {v, ns} <- pairs, v > v0 + warmup, do: ns / 1000
        Map.take(PushLatency.stats(samples), [:p50, :p99, :count])
    after
      60_000 -> raise "the Elixir watcher on #{node} did not report"
    end
  end

  defp plain_phase(node, warmup, updates, interval_ms) do
    receiver = :erpc.call(node, Cluster, :stamp_receiver, [self()])
    start = :erlang.monotonic_time(:millisecond) + 1

    for n <- 1..(warmup + updates) do
      Support.wait_until(start + (n - 1) * interval_ms)
      send(receiver, {:stamp, n, :os.system_time(:nanosecond)})
    end

    send(receiver, {:stamp, 0, -1})

    receive do
      {:latencies, ^receiver, pairs} ->
        samples = for {n, ns} <- pairs, n > warmup, do: ns / 1000
        Map.take(PushLatency.stats(samples), [:p50, :p99, :count])
    after
      60_000 -> raise "the receiver on #{node} did not report"
    end
  end

  defp write(sid, 0, _interval_ms, at) do
    Support.wait_until(at)
    :ok = SessionStore.update_variable(sid, :stamp, -1)
  end

  defp write(sid, n, interval_ms, at) do
    Support.wait_until(at)
    :ok = SessionStore.update_variable(sid, :stamp, :os.system_time(:nanosecond))
    write(sid, n - 1, interval_ms, at + interval_ms)
  end

  @doc "The table: p50 and p99 per path, and the cross-node / same-node ratios."
  def format(r) do
    rows =
      for {kind, label} <- [elixir: "Elixir watcher", python: "Python watcher (via gRPC)"] do
        same = r[kind].same_node
        cross = r[kind].cross_node

        "| #{label} | #{f1(same.p50)} / #{f1(same.p99)} | #{f1(cross.p50)} / #{f1(cross.p99)} | " <>
          "#{f2(cross.p50 / same.p50)} / #{f2(cross.p99 / same.p99)} | #{same.count} / #{cross.count} |\n"
      end

    IO.iodata_to_binary([
      "# Push latency across nodes (µs; write on node A, watcher on A or B)\n\n",
      "#{r.warmup} warm-up + #{r.updates} updates #{r.interval_ms} ms apart per path; " <>
        "#{r.machine.cpu_model}, #{r.machine.logical_processors} logical CPUs, " <>
        "OTP #{r.machine.otp_release}, load #{r.machine.load_average}\n\n",
      "| receiver | same node p50 / p99 | across nodes p50 / p99 | ratio p50 / p99 | got (same / across) |\n",
      "|---|---|---|---|---|\n",
      rows,
      "\nThe floor of a hop: a plain message from a process on A to one on B, same schedule: " <>
        "p50 #{f1(r.plain_message.p50)} / p99 #{f1(r.plain_message.p99)} µs.\n",
      "whole run #{r.elapsed_ms} ms\n"
    ])
  end

  defp f1(x), do: Support.fixed(x, 1)
  defp f2(x), do: Support.fixed(x, 2)

  @doc "The command-line entry: `--quick`, `--updates N`, `--warmup N`, `--interval-ms N`, `--json`."
  def main(argv) do
    {opts, _, _} =
      OptionParser.parse(argv,
        strict: [
          quick: :boolean,
          updates: :integer,
          warmup: :integer,
          interval_ms: :integer,
          json: :boolean
        ]
      )

    defaults = if opts[:quick], do: [updates: 50, warmup: 5], else: []

    run_opts =
      defaults
      |> Keyword.merge(Keyword.take(opts, [:updates, :warmup, :interval_ms]))
      |> Keyword.put(:progress, &IO.puts(:stderr, "[cluster_latency] " <> &1))

    result = run(run_opts)
    if opts[:json], do: IO.puts(Support.json(result)), else: IO.write(format(result))
  end
end

if Snakepit.Bench.Support.invoked_as_script?(__ENV__.file) do
  Snakepit.Bench.ClusterLatency.main(System.argv())
end
