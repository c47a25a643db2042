# Push latency: Elixir SessionStore.update_variable/3 → a Python process's
# `async for update in ctx.watch_variables([...])` on a grpc.aio channel,
# next to a gRPC Ping round trip on the same channel in the same run.
#
#     mix run bench/push_latency.exs                 # full: 2,000 updates 1 ms apart per receiver mode (~25 s)
#     mix run bench/push_latency.exs --quick         # 50 updates, 50 pings (a few seconds)
#     mix run bench/push_latency.exs --updates 5000 --pings 4000 --json
#
# From code (a test, the report writer): Code.require_file("bench/push_latency.exs")
# defines Snakepit.Bench.PushLatency without running anything; then
# Snakepit.Bench.PushLatency.run(updates: 200) returns the figures as a map.

Code.require_file("support.exs", __DIR__)

defmodule Snakepit.Bench.PushLatency do
  @moduledoc """
  Latency of a push from an Elixir write to a watching receiver process.

  The bench starts the bridge's gRPC server in this BEAM (port 0, loopback,
  `auth: false` so the figures are the transport's; `bench/auth_cost.py`
  measures what a token adds), creates a
  session with an integer variable `stamp`, and starts receivers:
  `bench/push_receiver.py` (modes `client` — the package's
  `SessionContext.watch_variables` iterator, what users write — and `raw` —
  the generated stub's `WatchVariables` stream without the client library),
  and `target/release/watch_load receive` (mode `rust`: a tonic client, the
  floor without Python). For each mode, in turn, once the receiver says its
  watch is open and `SessionStore.get_session/1` counts it (`watcher_count`),
  this process writes `warmup + updates` values paced `interval_ms` apart,
  each value being `:os.system_time(:nanosecond)` (CLOCK_REALTIME) read just
  before the write, then a negative value to end the phase. The receiver
  computes `time.time_ns() - value` on receipt (the same clock, so no
  cross-process clock translation is needed). Warm-up updates are discarded
  by version. A receiver that falls behind gets the latest value instead of
  every one (coalescing); an update it did not get by itself counts with the
  receipt time of the later update that replaced it.

  Each receiver also times `Ping` round trips on the same channel, half
  before and half after each phase; `p50 / Ping p50` compares a push (one
  hop) with a round trip (two hops).

  `run/1` returns a map (see `t:result/0`); `format/1` renders the table.
  """

  alias Snakepit.Bench.Support
  alias Snakepit.Bridge.{Server, SessionStore}

  @root Support.root()

  @targets %{p50_us: 200.0, p99_us: 450.0, p50_over_ping: 0.6}

  # Reference figures: other systems on the same workload, on this machine class (µs).
  @references [
    %{name: "Redis pub/sub + redis-py asyncio", p50_us: 242.0, p99_us: 445.0},
    %{name: "etcd Watch + grpcio", p50_us: 506.0, p99_us: 859.0}
  ]

  # {mode, receiver, label}, in the order the phases run.
  @modes [
    {:client, :python, "Python SessionContext.watch_variables (async for)"},
    {:raw, :python, "Python raw stub WatchVariables stream"},
    {:rust, :rust, "Rust tonic stream (watch_load receive)"}
  ]

  @type stats :: %{
          count: non_neg_integer(),
          p50: float(),
          p90: float(),
          p99: float(),
          p999: float(),
          max: float(),
          min: float(),
          mean: float()
        }

  @type mode_result :: %{
          mode: atom(),
          receiver: atom(),
          label: String.t(),
          sent: pos_integer(),
          received: non_neg_integer(),
          coalesced: non_neg_integer(),
          latency_us: stats(),
          samples_us: [float()],
          ping_us: stats(),
          p50_over_ping: float(),
          target_met: %{p50: boolean(), p99: boolean(), p50_over_ping: boolean()}
        }

  @type result :: %{
          unit: :us,
          updates: pos_integer(),
          warmup: non_neg_integer(),
          interval_ms: pos_integer(),
          pings: pos_integer(),
          modes: [atom()],
          results: %{atom() => mode_result()},
          write_gap_ms: stats(),
          targets: map(),
          references: [map()],
          receivers: %{atom() => String.t()},
          server: String.t(),
          machine: map(),
          elapsed_ms: non_neg_integer()
        }

  @doc "The phases: `[{mode, receiver, label}]`, in the order they run."
  def modes, do: @modes

  @doc "The targets: p50 and p99 in µs, and the largest p50 / Ping p50."
  def targets, do: @targets

  @doc """
  Runs the benchmark and returns its figures.

  Options:
    * `:updates` — timed updates per mode (default 2000)
    * `:warmup` — untimed updates first, per mode (default 100)
    * `:interval_ms` — pause after each write (default 1)
    * `:pings` — timed Ping round trips per receiver process (default 2000)
    * `:modes` — subset of `[:client, :raw, :rust]` (default all three)
    * `:port` — use the bridge server already listening on this port of
      127.0.0.1 (it must serve this BEAM's store); default: start one
    * `:progress` — a 1-arity function called with a string now and then
  """
  @spec run(keyword()) :: result()
  def run(opts \\ []) do
    updates = Support.positive!(opts, :updates, 2000)
    warmup = Keyword.get(opts, :warmup, 100)
    interval_ms = Support.positive!(opts, :interval_ms, 1)
    pings = Support.positive!(opts, :pings, 2000)
    modes = Keyword.get(opts, :modes, Enum.map(@modes, &elem(&1, 0)))
    progress = Keyword.get(opts, :progress, fn _ -> :ok end)

    unless is_integer(warmup) and warmup >= 0,
      do: raise(ArgumentError, ":warmup must be a non-negative integer")

    unknown = modes -- Enum.map(@modes, &elem(&1, 0))

    if modes == [] or unknown != [],
      do: raise(ArgumentError, "unknown or no :modes: #{inspect(modes)}")

    started = System.monotonic_time(:millisecond)
    {port, stop_server} = server(opts[:port])
    sid = "bench-push-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)
    {:ok, _} = SessionStore.register_variable(sid, :stamp, :integer, 0)

    # One receiver process per kind, running its modes in order.
    groups =
      [:python, :rust]
      |> Enum.map(fn kind -> {kind, Enum.filter(modes, &(receiver_of(&1) == kind))} end)
      |> Enum.reject(fn {_, ms} -> ms == [] end)

    try do
      {per_mode, gaps, versions} =
        Enum.reduce(groups, {%{}, [], %{}}, fn {kind, kind_modes}, {acc, gaps, versions} ->
          per_phase_pings = max(2, div(pings, length(kind_modes)))

          {results, kind_gaps, version} =
            run_receiver(
              kind,
              kind_modes,
              port,
              sid,
              updates,
              warmup,
              interval_ms,
              per_phase_pings,
              progress
            )

          {Map.merge(acc, results), gaps ++ kind_gaps, Map.put(versions, kind, version)}
        end)

      Support.wait_watchers(sid, 0)

      %{
        unit: :us,
        updates: updates,
        warmup: warmup,
        interval_ms: interval_ms,
        pings: pings,
        modes: Enum.filter(Enum.map(@modes, &elem(&1, 0)), &(&1 in modes)),
        results: per_mode,
        write_gap_ms: stats(gaps),
        targets: @targets,
        references: @references,
        receivers: versions,
        server:
          "127.0.0.1:#{port}" <>
            if(stop_server, do: " (in this BEAM, started by the bench)", else: ""),
        machine: Support.machine(),
        elapsed_ms: System.monotonic_time(:millisecond) - started
      }
    after
      SessionStore.delete_session(sid)
      if stop_server, do: stop_server.()
    end
  end

  defp receiver_of(mode), do: Enum.find_value(@modes, fn {m, r, _} -> if m == mode, do: r end)
  defp label_of(mode), do: Enum.find_value(@modes, fn {m, _, l} -> if m == mode, do: l end)

  defp server(nil) do
    name = :"snakepit_bench_push_server_#{System.unique_integer([:positive])}"
    {:ok, pid} = Server.start_link(host: "127.0.0.1", port: 0, name: name, auth: false)
    {Server.port(name), fn -> GenServer.stop(pid) end}
  end

  defp server(port) when is_integer(port), do: {port, nil}

  # -- one receiver process ------------------------------------------------------

  defp run_receiver(kind, modes, port, sid, updates, warmup, interval_ms, pings, progress) do
    address = "127.0.0.1:#{port}"

    {exe, args} =
      case kind do
        :python ->
          {python(),
           [
             Path.join(@root, "bench/push_receiver.py"),
             "--address",
             address,
             "--session",
             sid,
             "--variable",
             "stamp",
             "--modes",
             Enum.join(modes, ","),
             "--pings",
             to_string(pings)
           ]}

        :rust ->
          {watch_load(),
           [
             "receive",
             "--address",
             address,
             "--session",
             sid,
             "--variable",
             "stamp",
             "--pings",
             to_string(pings)
           ]}
      end

    progress.("starting the #{kind} receiver (#{Enum.join(modes, ", ")})")

    rx =
      Port.open({:spawn_executable, exe}, [
        :binary,
        :exit_status,
        :use_stdio,
        :stderr_to_stdout,
        {:line, 1_048_576},
        {:args, args},
        {:env, [{~c"PYTHONUNBUFFERED", ~c"1"}]}
      ])

    reader = %{port: rx, log: []}

    try do
      {_, reader} = expect(reader, "READY", 30_000)

      {results, gaps, reader} =
        Enum.reduce(modes, {%{}, [], reader}, fn mode, {acc, gaps, reader} ->
          {_, reader} = expect(reader, "WATCHING #{mode}", 30_000)
          Support.wait_watchers(sid, 1)

          progress.(
            "#{mode}: watch live; #{warmup} warm-up + #{updates} timed updates, #{interval_ms} ms apart"
          )

          {:ok, %{version: v0}} = SessionStore.get_variable(sid, :stamp)
          {phase_gaps, stamps} = write_phase(sid, warmup + updates, interval_ms)

          {line, reader} = expect(reader, "SAMPLES #{mode} ", 60_000)
          {samples, received} = latencies(parse_pairs(line), v0, stamps, warmup, updates)

          if samples == [],
            do:
              raise(
                "the #{mode} receiver reported none of the #{updates} timed updates:\n#{log(reader)}"
              )

          {pline, reader} = expect(reader, "PINGS #{mode} ", 60_000)
          ping_ns = parse_numbers(pline)
          progress.("#{mode}: #{received} of #{updates} timed updates received one by one")
          {Map.put(acc, mode, {samples, received, ping_ns}), gaps ++ phase_gaps, reader}
        end)

      {done, reader} = expect(reader, "DONE", 30_000)
      status = wait_exit(reader, 30_000)

      if status != 0,
        do: raise("the #{kind} receiver exited with status #{status}:\n#{log(reader)}")

      all_pings = results |> Map.values() |> Enum.flat_map(fn {_, _, p} -> p end)
      ping = stats(Enum.map(all_pings, &(&1 / 1000)))

      per_mode =
        Map.new(results, fn {mode, {samples, received, ping_ns}} ->
          lat = stats(samples)
          own_ping = stats(Enum.map(ping_ns, &(&1 / 1000)))

          {mode,
           %{
             mode: mode,
             receiver: kind,
             label: label_of(mode),
             sent: updates,
             received: received,
             coalesced: updates - received,
             latency_us: lat,
             samples_us: samples,
             ping_us: ping,
             phase_ping_us: own_ping,
             p50_over_ping: lat.p50 / ping.p50,
             target_met: %{
               p50: lat.p50 <= @targets.p50_us,
               p99: lat.p99 <= @targets.p99_us,
               p50_over_ping: lat.p50 / ping.p50 <= @targets.p50_over_ping
             }
           }}
        end)

      {per_mode, gaps, String.replace_prefix(done, "DONE ", "")}
    after
      if Port.info(rx) != nil, do: Port.close(rx)
    end
  end

  # Writes `n` stamps on a fixed schedule, one every `interval_ms` (absolute
  # timers on the millisecond clock, so the BEAM's millisecond timer
  # granularity does not stretch the interval: a relative `after 1` sleeps
  # about 2 ms), then the end marker. Returns {the gaps between consecutive
  # writes in ms, the values written in order (the marker -1 last)}.
  defp write_phase(sid, n, interval_ms) do
    start = :erlang.monotonic_time(:millisecond) + 1
    write_phase(sid, n, interval_ms, start, nil, [], [])
  end

  # After the last stamp, on the next tick, the end marker (-1): a tick later,
  # so it rarely coalesces with the last timed update.
  defp write_phase(sid, 0, _interval_ms, at, _prev, gaps, stamps) do
    Support.wait_until(at)
    :ok = SessionStore.update_variable(sid, :stamp, -1)
    {Enum.reverse(gaps), Enum.reverse([-1 | stamps])}
  end

  defp write_phase(sid, n, interval_ms, at, prev, gaps, stamps) do
    Support.wait_until(at)

    t = :erlang.monotonic_time(:nanosecond)
    stamp = :os.system_time(:nanosecond)
    :ok = SessionStore.update_variable(sid, :stamp, stamp)
    gaps = if prev, do: [(t - prev) / 1.0e6 | gaps], else: gaps
    write_phase(sid, n - 1, interval_ms, at + interval_ms, t, gaps, [stamp | stamps])
  end

  # "SAMPLES mode n v:ns v:ns ..." -> [{version, receipt time - value in ns}]
  # (the end marker's pair included: its value is -1).
  defp parse_pairs(line) do
    [_, _mode, _n | pairs] = String.split(line, " ", trim: true)

    Enum.map(pairs, fn pair ->
      [v, ns] = String.split(pair, ":")
      {String.to_integer(v), String.to_integer(ns)}
    end)
  end

  # The latency of every timed update, in µs, and how many arrived one by one.
  # The phase's writes have versions v0 + 1 .. v0 + length(values) (values:
  # the stamps, then the marker -1), so a pair gives the receipt time
  # (its ns + the value written). An update that did not arrive by itself was
  # coalesced into a later one: it reached the receiver when the next update
  # that did arrive came, and that is its latency. (Timed updates after the
  # last received one, if any, have no receipt time and are left out.)
  defp latencies(pairs, v0, values, warmup, updates) do
    values = List.to_tuple(values)
    n = tuple_size(values)

    received_at =
      for {v, ns} <- pairs,
          v > v0 and v <= v0 + n,
          into: %{},
          do: {v, ns + elem(values, v - v0 - 1)}

    first = v0 + warmup + 1
    last = v0 + warmup + updates

    {samples, _} =
      Enum.reduce((v0 + n)..first//-1, {[], nil}, fn v, {acc, next_at} ->
        at = Map.get(received_at, v, next_at)

        acc =
          if v <= last and at != nil,
            do: [(at - elem(values, v - v0 - 1)) / 1000 | acc],
            else: acc

        {acc, at}
      end)

    received = Enum.count(first..last, &Map.has_key?(received_at, &1))
    {samples, received}
  end

  defp parse_numbers(line) do
    [_, _mode, _n | values] = String.split(line, " ", trim: true)
    Enum.map(values, &String.to_integer/1)
  end

  # -- the receiver's output -----------------------------------------------------

  # Reads lines until one starts with `prefix`; returns {line, reader}. Other
  # lines are kept (for error messages); ERROR lines and exits fail at once.
  defp expect(%{port: port} = reader, prefix, timeout) do
    case next_line(port, [], timeout) do
      {:line, line} ->
        cond do
          String.starts_with?(line, prefix) ->
            {line, reader}

          String.starts_with?(line, "ERROR") ->
            raise "the receiver failed: #{line}\n#{log(%{reader | log: [line | reader.log]})}#{drain(port)}"

          true ->
            expect(%{reader | log: [String.slice(line, 0, 500) | reader.log]}, prefix, timeout)
        end

      {:exit, status} ->
        raise "the receiver exited with status #{status} while we waited for #{inspect(prefix)}:\n#{log(reader)}"

      :timeout ->
        raise "no #{inspect(prefix)} line from the receiver within #{timeout} ms:\n#{log(reader)}"
    end
  end

  defp next_line(port, acc, timeout) do
    receive do
      {^port, {:data, {:eol, chunk}}} -> {:line, IO.iodata_to_binary(Enum.reverse([chunk | acc]))}
      {^port, {:data, {:noeol, chunk}}} -> next_line(port, [chunk | acc], timeout)
      {^port, {:exit_status, status}} -> {:exit, status}
    after
      timeout -> :timeout
    end
  end

  defp drain(port) do
    receive do
      {^port, {:data, {_, chunk}}} -> chunk <> "\n" <> drain(port)
      {^port, {:exit_status, _}} -> ""
    after
      2000 -> ""
    end
  end

  defp wait_exit(%{port: port}, timeout) do
    receive do
      {^port, {:exit_status, status}} -> status
      {^port, {:data, _}} -> wait_exit(%{port: port}, timeout)
    after
      timeout -> raise "the receiver did not exit within #{timeout} ms"
    end
  end

  defp log(%{log: lines}), do: lines |> Enum.reverse() |> Enum.take(-40) |> Enum.join("\n")

  # -- where the executables are -------------------------------------------------

  @doc "The Python interpreter: `$SNAKEPIT_PYTHON`, else the repo's `.venv/bin/python`."
  defdelegate python(), to: Support

  @doc "The Rust load client: `$SNAKEPIT_WATCH_LOAD`, else `target/release/watch_load`."
  def watch_load, do: Support.watch_load!("or leave :rust out of :modes (--no-rust)")

  # -- statistics ----------------------------------------------------------------

  @doc false
  def stats([]), do: %{count: 0}

  def stats(values) do
    sorted = Enum.sort(values)
    count = length(sorted)
    t = List.to_tuple(sorted)

    %{
      count: count,
      p50: percentile(t, 50),
      p90: percentile(t, 90),
      p99: percentile(t, 99),
      p999: percentile(t, 99.9),
      max: elem(t, count - 1) * 1.0,
      min: elem(t, 0) * 1.0,
      mean: Enum.sum(sorted) / count
    }
  end

  defp percentile(t, p), do: Support.percentile(t, p)

  # -- output --------------------------------------------------------------------

  @doc "Renders a `run/1` result as a plain-text table (a string)."
  @spec format(result()) :: String.t()
  def format(r) do
    m = r.machine
    g = r.write_gap_ms

    header = [
      "Push latency: Elixir SessionStore.update_variable/3 -> a receiver's watch stream; per receiver mode ",
      "#{r.updates} timed updates (+#{r.warmup} warm-up) paced #{r.interval_ms} ms apart ",
      "(actual gap between writes: median #{f2(g[:p50])} ms, p99 #{f2(g[:p99])} ms); server #{r.server}\n",
      "machine: #{m.cpu_model}, #{m.logical_processors} logical CPUs, #{m.schedulers_online} schedulers, ",
      "OTP #{m.otp_release}, Elixir #{m.elixir_version}, load average #{inspect(m.load_average)}; ",
      "receivers: #{Enum.map_join(r.receivers, "; ", fn {k, v} -> "#{k}: #{v}" end)}\n",
      "latency = the receiver's CLOCK_REALTIME on receipt - the writer's CLOCK_REALTIME read just before ",
      "the write, µs; Ping = a unary gRPC round trip on the receiver's same channel (#{r.pings} per receiver process)\n\n"
    ]

    cols = [
      {"p50", 9},
      {"p90", 9},
      {"p99", 9},
      {"p99.9", 9},
      {"max", 9},
      {"got", 11},
      {"Ping p50", 10},
      {"p50/Ping", 10}
    ]

    table_head = [
      String.pad_trailing("receiver", 52),
      Enum.map(cols, fn {c, w} -> String.pad_leading(c, w) end),
      "\n",
      String.duplicate("-", 52 + Enum.sum(Enum.map(cols, &elem(&1, 1)))),
      "\n"
    ]

    rows =
      for mode <- r.modes do
        e = r.results[mode]
        l = e.latency_us

        [
          String.pad_trailing(e.label, 52),
          Enum.map([l.p50, l.p90, l.p99, l.p999, l.max], &String.pad_leading(f1(&1), 9)),
          String.pad_leading("#{e.received}/#{e.sent}", 11),
          String.pad_leading(f1(e.ping_us.p50), 10),
          String.pad_leading(f2(e.p50_over_ping) <> "x", 10),
          "\n"
        ]
      end

    res = r.results

    where =
      if Map.has_key?(res, :client) and Map.has_key?(res, :raw) and Map.has_key?(res, :rust) do
        rust = res.rust.latency_us.p50
        raw = res.raw.latency_us.p50
        client = res.client.latency_us.p50

        [
          "\nWhere a push's time goes (p50): server + loopback + a tonic client #{f1(rust)} µs; ",
          "grpcio's aio receive path adds #{f1(raw - rust)} µs (raw stub #{f1(raw)} µs); ",
          "SessionContext's iterator adds #{f1(client - raw)} µs (#{f1(client)} µs).\n"
        ]
      else
        []
      end

    verdict =
      case res[:client] do
        nil ->
          []

        c ->
          t = r.targets

          [
            "\nTargets, for the user-facing row (SessionContext):\n",
            "  p50 #{f1(c.latency_us.p50)} µs, target <= #{f1(t.p50_us)} µs: #{met(c.target_met.p50)}\n",
            "  p99 #{f1(c.latency_us.p99)} µs, target <= #{f1(t.p99_us)} µs: #{met(c.target_met.p99)}\n",
            "  p50 / Ping p50 = #{f2(c.p50_over_ping)}, target <= #{f2(t.p50_over_ping)}: #{met(c.target_met.p50_over_ping)}\n"
          ]
      end

    refs = [
      "References (same workload, this machine class), p50 / p99: ",
      Enum.map_join(r.references, "; ", fn x ->
        "#{x.name} #{f1(x.p50_us)} / #{f1(x.p99_us)} µs"
      end),
      "\n"
    ]

    coalesced = Enum.sum(Enum.map(r.modes, &r.results[&1].coalesced))

    IO.iodata_to_binary([
      header,
      table_head,
      rows,
      "(got = timed updates received one by one; the others (#{coalesced} in all) were coalesced into a later update\n",
      " and count with the time that one arrived)\n",
      where,
      verdict,
      refs,
      "whole run #{r.elapsed_ms} ms\n"
    ])
  end

  @doc "Prints `format/1` to stdout."
  def print(result), do: IO.write(format(result))

  defp met(ok), do: Support.met(ok)
  defp f1(x), do: Support.fixed(x, 1)
  defp f2(x), do: Support.fixed(x, 2)

  # -- command line ----------------------------------------------------------------

  @doc "The command-line entry: `--quick`, `--updates N`, `--warmup N`, `--interval-ms N`, `--pings N`, `--no-raw`, `--no-rust`, `--port P`, `--json`."
  def main(argv) do
    {opts, rest, invalid} =
      OptionParser.parse(argv,
        strict: [
          quick: :boolean,
          updates: :integer,
          warmup: :integer,
          interval_ms: :integer,
          pings: :integer,
          no_raw: :boolean,
          no_rust: :boolean,
          port: :integer,
          json: :boolean
        ]
      )

    if rest != [] or invalid != [] do
      IO.puts(
        :stderr,
        "usage: mix run bench/push_latency.exs [--quick] [--updates N] [--warmup N] [--interval-ms N] " <>
          "[--pings N] [--no-raw] [--no-rust] [--port P] [--json]"
      )

      System.halt(2)
    end

    defaults = if opts[:quick], do: [updates: 50, warmup: 5, pings: 50], else: []

    modes =
      [:client, :raw, :rust]
      |> Enum.reject(&(&1 == :raw and opts[:no_raw]))
      |> Enum.reject(&(&1 == :rust and opts[:no_rust]))

    run_opts =
      defaults
      |> Keyword.merge(Keyword.take(opts, [:updates, :warmup, :interval_ms, :pings, :port]))
      |> Keyword.put(:modes, modes)
      |> Keyword.put(:progress, &IO.puts(:stderr, "[push_latency] " <> &1))

    result = run(run_opts)

    if opts[:json] do
      IO.puts(Support.json(result))
    else
      print(result)
    end
  end
end

if Snakepit.Bench.Support.invoked_as_script?(__ENV__.file) do
  Snakepit.Bench.PushLatency.main(System.argv())
end
