# Writer cost vs fan-out: the time per SessionStore.update_variable/3 call
# (NIF) on a variable with 0, 1, 100 and 1,000 Elixir watcher processes, and
# with 1,000 gRPC watch streams, measured in the same run.
#
#     mix run bench/writer_cost.exs                   # full: 400 rounds x 1000 calls per row (~20 s)
#     mix run bench/writer_cost.exs --quick           # tiny (a few seconds)
#     mix run bench/writer_cost.exs --batches 300 --batch-size 1000 --grpc 0 --json
#
# From code (a test, the report writer): Code.require_file("bench/writer_cost.exs")
# defines Snakepit.Bench.WriterCost without running anything; then
# Snakepit.Bench.WriterCost.run(batches: 20) returns the figures as a map.

Code.require_file("support.exs", __DIR__)

defmodule Snakepit.Bench.WriterCost do
  @moduledoc """
  What watchers cost the writer.

  Each row has its own session (watch bookkeeping is per session: a session
  with no watchers at all skips it, which is the 0-watcher baseline) with one
  integer variable, watched by the row's watchers: Elixir processes that `watch_variables/3` it and drain their
  mailbox, or gRPC streams held by `target/release/watch_load hold` (10
  connections) against a bridge server this bench starts in the BEAM. As in
  `bench/nif_bench.exs`, a sample is a batch of `batch_size` back-to-back
  `SessionStore.update_variable/3` calls (a new value each call), timed with
  `:erlang.monotonic_time(:nanosecond)`; per-call time = batch time /
  `batch_size`. Rounds time one batch of every row, in a rotating order.

  The writer never waits for watchers, but on a small machine their delivery
  runs at the same time as the writer's batch (the watch dispatcher thread,
  the tokio runtime, the watcher processes), so that is measured too: after
  each batch the bench writes an end-of-round marker and waits until every
  watcher of the row has received it before timing the next row, so the
  delivery of one row's burst never overlaps another row's batch. The wait
  (`drain_ms`) is reported as well.

  `run/1` returns a map (see `t:result/0`); `format/1` renders the table.
  """

  alias Snakepit.Bench.Support
  alias Snakepit.Bridge.{Server, SessionStore, VariableUpdate}

  @target_ratio 2.0
  @wait_ms 60_000

  @type row_stats :: %{
          key: atom(),
          label: String.t(),
          kind: :none | :elixir | :grpc,
          watchers: non_neg_integer(),
          median_ns: float(),
          p99_ns: float(),
          mean_ns: float(),
          min_ns: float(),
          max_ns: float(),
          batches: pos_integer(),
          calls: pos_integer(),
          ratio_vs_none: float(),
          min_ratio_vs_none: float(),
          drain_ms: map(),
          messages_per_watcher: float() | nil
        }

  @type result :: %{
          unit: :ns_per_call,
          batches: pos_integer(),
          batch_size: pos_integer(),
          warmup_batches: non_neg_integer(),
          rows: [atom()],
          results: %{atom() => row_stats()},
          target_ratio: float(),
          target_met: %{atom() => boolean()},
          machine: map(),
          elapsed_ms: non_neg_integer()
        }

  @doc """
  The largest allowed ratio of the 1,000-watcher median to the 0-watcher
  median. `target_met` judges the row with the most watchers of
  each kind (Elixir, gRPC) against it.
  """
  def target_ratio, do: @target_ratio

  @doc """
  Runs the benchmark and returns its figures.

  Options:
    * `:batches` — timed rounds (default 400); each times one batch per row
    * `:batch_size` — calls per batch (default 1000)
    * `:warmup_batches` — untimed rounds first (default `max(3, div(batches, 10))`)
    * `:elixir_watchers` — a row per count of Elixir watcher processes (default `[0, 1, 100, 1000]`; `0` is the baseline and always runs)
    * `:grpc_watchers` — gRPC streams of the gRPC row (default 1000; `0` leaves the row out)
    * `:progress` — a 1-arity function called with a string now and then
  """
  @spec run(keyword()) :: result()
  def run(opts \\ []) do
    batches = Support.positive!(opts, :batches, 400)
    batch_size = Support.positive!(opts, :batch_size, 1000)
    warmup = Keyword.get(opts, :warmup_batches, max(3, div(batches, 10)))
    elixir_counts = Enum.uniq([0 | Keyword.get(opts, :elixir_watchers, [0, 1, 100, 1000])])
    grpc = Keyword.get(opts, :grpc_watchers, 1000)
    progress = Keyword.get(opts, :progress, fn _ -> :ok end)

    unless Enum.all?(elixir_counts, &(is_integer(&1) and &1 >= 0)),
      do: raise(ArgumentError, ":elixir_watchers must be non-negative integers")

    unless is_integer(grpc) and grpc >= 0,
      do: raise(ArgumentError, ":grpc_watchers must be a non-negative integer")

    started = System.monotonic_time(:millisecond)
    prefix = "bench-writer-#{System.unique_integer([:positive])}"

    rows =
      Enum.map(elixir_counts, fn
        0 ->
          %{key: :none, kind: :none, watchers: 0, var: :w_none, label: "no watchers"}

        n ->
          %{
            key: :"elixir_#{n}",
            kind: :elixir,
            watchers: n,
            var: :"w_elixir_#{n}",
            label: "#{n} Elixir watcher#{if n > 1, do: "s"}"
          }
      end) ++
        if grpc > 0 do
          conns = min(10, grpc)

          [
            %{
              key: :"grpc_#{grpc}",
              kind: :grpc,
              watchers: grpc,
              connections: conns,
              var: :"w_grpc_#{grpc}",
              label: "#{grpc} gRPC streams (#{conns} connections)"
            }
          ]
        else
          []
        end

    rows = Enum.map(rows, &Map.put(&1, :sid, "#{prefix}-#{&1.key}"))

    Enum.each(rows, fn row ->
      {:ok, _} = SessionStore.create_session(row.sid)
      {:ok, _} = SessionStore.register_variable(row.sid, row.var, :integer, 0)
    end)

    server = if grpc > 0, do: start_server(), else: nil
    parent = self()

    try do
      rows = Enum.map(rows, &start_watchers(&1, &1.sid, parent, server, progress))
      Enum.each(rows, &Support.wait_watchers(&1.sid, &1.watchers, @wait_ms, 5))
      total = Enum.sum(Enum.map(rows, & &1.watchers))
      progress.("#{total} watchers live on #{length(rows)} variables, one session each")

      counter = :counters.new(1, [])
      progress.("warming up: #{warmup} rounds x #{length(rows)} rows x #{batch_size} calls")
      Enum.each(1..warmup//1, fn r -> round_of_batches(rows, r, batch_size, counter) end)

      progress.("timing: #{batches} rounds x #{length(rows)} rows x #{batch_size} calls")
      step = max(1, div(batches, 10))

      samples =
        Enum.map(1..batches, fn i ->
          if rem(i, step) == 0, do: progress.("  round #{i}/#{batches}")
          round_of_batches(rows, warmup + i, batch_size, counter)
        end)

      messages = Map.new(rows, fn row -> {row.key, stop_watchers(row)} end)
      Enum.each(rows, &Support.wait_watchers(&1.sid, 0, @wait_ms, 5))
      base = per_call_median(samples, :none, batch_size)
      base_min = samples |> Enum.map(fn s -> elem(s.none, 0) / batch_size end) |> Enum.min()

      results =
        Map.new(rows, fn row ->
          per_call = Enum.map(samples, fn s -> elem(Map.fetch!(s, row.key), 0) / batch_size end)
          drains = Enum.map(samples, fn s -> elem(Map.fetch!(s, row.key), 1) end)
          st = stats(per_call)
          total_writes = (warmup + batches) * (batch_size + 1)

          {row.key,
           Map.merge(st, %{
             key: row.key,
             label: row.label,
             kind: row.kind,
             watchers: row.watchers,
             batches: batches,
             calls: batches * batch_size,
             ratio_vs_none: st.median_ns / base,
             min_ratio_vs_none: st.min_ns / base_min,
             drain_ms: drain_stats(drains),
             messages_per_watcher:
               case messages[row.key] do
                 nil -> nil
                 m -> m / row.watchers
               end,
             writes: total_writes
           })}
        end)

      # Judged on the largest row of each kind (the target is stated for 1,000 watchers).
      target_met =
        results
        |> Map.values()
        |> Enum.reject(&(&1.kind == :none))
        |> Enum.group_by(& &1.kind)
        |> Map.new(fn {_, rs} ->
          r = Enum.max_by(rs, & &1.watchers)
          {r.key, r.ratio_vs_none <= @target_ratio}
        end)

      %{
        unit: :ns_per_call,
        batches: batches,
        batch_size: batch_size,
        warmup_batches: warmup,
        rows: Enum.map(rows, & &1.key),
        results: results,
        target_ratio: @target_ratio,
        target_met: target_met,
        machine: Support.machine(),
        elapsed_ms: System.monotonic_time(:millisecond) - started
      }
    after
      Enum.each(rows, &SessionStore.delete_session(&1.sid))
      if server, do: server.stop.()
    end
  end

  # -- watchers -------------------------------------------------------------------

  defp start_watchers(%{kind: :none} = row, _sid, _parent, _server, _progress), do: row

  defp start_watchers(%{kind: :elixir} = row, sid, parent, _server, progress) do
    progress.("starting #{row.watchers} Elixir watcher processes on #{row.var}")

    pids =
      for _ <- 1..row.watchers do
        spawn_link(fn -> watcher(sid, row.var, row.key, parent) end)
      end

    Enum.each(pids, fn pid ->
      receive do
        {:watching, ^pid} -> :ok
      after
        @wait_ms -> raise "an Elixir watcher did not start"
      end
    end)

    Map.put(row, :pids, pids)
  end

  defp start_watchers(%{kind: :grpc} = row, sid, _parent, server, progress) do
    progress.(
      "starting watch_load hold: #{row.watchers} gRPC streams on #{row.var} over #{row.connections} connections"
    )

    exe = watch_load()

    port =
      Port.open({:spawn_executable, exe}, [
        :binary,
        :exit_status,
        :use_stdio,
        :stderr_to_stdout,
        {:line, 65_536},
        {:args,
         [
           "hold",
           "--address",
           "127.0.0.1:#{server.port}",
           "--session",
           sid,
           "--variable",
           to_string(row.var),
           "--connections",
           to_string(row.connections),
           "--streams",
           to_string(row.watchers)
         ]}
      ])

    "LIVE " <> _ = expect_line(port, "LIVE ", @wait_ms)
    Map.put(row, :port, port)
  end

  # An Elixir watcher: drains its mailbox; tells the bench when it has a round's marker.
  defp watcher(sid, var, key, parent) do
    {:ok, ref} = SessionStore.watch_variables(sid, [var])
    send(parent, {:watching, self()})
    watcher_loop(ref, key, parent, 0)
  end

  defp watcher_loop(ref, key, parent, count) do
    receive do
      {:snakepit_variable_update, ^ref, %VariableUpdate{update_type: :value_change, value: v}}
      when v < 0 ->
        send(parent, {:drained, key, -v})
        watcher_loop(ref, key, parent, count + 1)

      {:snakepit_variable_update, ^ref, %VariableUpdate{update_type: :value_change}} ->
        watcher_loop(ref, key, parent, count + 1)

      {:snakepit_variable_update, ^ref, _} ->
        watcher_loop(ref, key, parent, count)

      {:count, from} ->
        send(from, {:count, self(), count})
        watcher_loop(ref, key, parent, count)
    end
  end

  # Ends a row's watchers; returns the messages they received in all (nil: none).
  defp stop_watchers(%{kind: :none}), do: nil

  defp stop_watchers(%{kind: :elixir, pids: pids}) do
    Enum.each(pids, &send(&1, {:count, self()}))

    total =
      Enum.reduce(pids, 0, fn pid, acc ->
        receive do
          {:count, ^pid, n} -> acc + n
        after
          @wait_ms -> raise "an Elixir watcher did not answer"
        end
      end)

    Enum.each(pids, fn pid ->
      Process.unlink(pid)
      Process.exit(pid, :kill)
    end)

    total
  end

  # The count came with the last DRAINED line (the marker is the last write);
  # closing the port closes watch_load's stdin, and it exits.
  defp stop_watchers(%{kind: :grpc, port: port} = row) do
    Port.close(port)
    Process.get({:grpc_messages, row.key})
  end

  # -- rounds ------------------------------------------------------------------------

  # One batch of every row (rotating the order by round); %{key => {batch ns, drain ms}}.
  defp round_of_batches(rows, round, n, counter) do
    shift = rem(round, length(rows))
    {a, b} = Enum.split(rows, shift)

    Map.new(b ++ a, fn row ->
      base = :counters.get(counter, 1)
      :counters.add(counter, 1, n)
      t0 = :erlang.monotonic_time(:nanosecond)
      update_loop(row.sid, row.var, n, base)
      t1 = :erlang.monotonic_time(:nanosecond)
      # The end-of-round marker (not timed), then wait until every watcher has it.
      :ok = SessionStore.update_variable(row.sid, row.var, -round)
      wait_drained(row, round)
      t2 = :erlang.monotonic_time(:nanosecond)
      {row.key, {t1 - t0, (t2 - t1) / 1.0e6}}
    end)
  end

  # A new positive value every call.
  defp update_loop(_sid, _var, 0, _base), do: :ok

  defp update_loop(sid, var, n, base) do
    :ok = SessionStore.update_variable(sid, var, base + n)
    update_loop(sid, var, n - 1, base)
  end

  defp wait_drained(%{kind: :none}, _round), do: :ok

  defp wait_drained(%{kind: :elixir, key: key, watchers: n}, round), do: await_acks(key, round, n)

  # "DRAINED <round> messages=<total so far>"
  defp wait_drained(%{kind: :grpc, port: port, key: key}, round) do
    ["DRAINED", r, "messages=" <> m] =
      port |> expect_line("DRAINED ", @wait_ms) |> String.split(" ")

    if String.to_integer(r) != round,
      do: raise("watch_load hold drained round #{r}, expected #{round}")

    Process.put({:grpc_messages, key}, String.to_integer(m))
    :ok
  end

  defp await_acks(_key, _round, 0), do: :ok

  defp await_acks(key, round, left) do
    receive do
      {:drained, ^key, ^round} -> await_acks(key, round, left - 1)
    after
      @wait_ms -> raise "#{left} watchers of #{key} never got the marker of round #{round}"
    end
  end

  defp expect_line(port, prefix, timeout) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        if String.starts_with?(line, prefix), do: line, else: expect_line(port, prefix, timeout)

      {^port, {:exit_status, status}} ->
        raise "watch_load hold exited with status #{status} while we waited for #{inspect(prefix)}"
    after
      timeout -> raise "no #{inspect(prefix)} line from watch_load hold within #{timeout} ms"
    end
  end

  @doc "The Rust load client: `$SNAKEPIT_WATCH_LOAD`, else `target/release/watch_load`."
  def watch_load, do: Support.watch_load!("or pass grpc_watchers: 0 (--grpc 0)")

  defp start_server do
    name = :"snakepit_bench_writer_server_#{System.unique_integer([:positive])}"
    # Loopback without a token, so the figures are the store's and the
    # transport's; bench/auth_cost.py measures what a token adds.
    {:ok, pid} = Server.start_link(host: "127.0.0.1", port: 0, name: name, auth: false)
    %{port: Server.port(name), stop: fn -> GenServer.stop(pid) end}
  end

  # -- statistics ----------------------------------------------------------------------

  defp per_call_median(samples, key, batch_size) do
    samples
    |> Enum.map(fn s -> elem(Map.fetch!(s, key), 0) / batch_size end)
    |> stats()
    |> Map.fetch!(:median_ns)
  end

  defp stats(values), do: Support.ns_stats(values)

  defp drain_stats(values) do
    t = values |> Enum.sort() |> List.to_tuple()
    %{p50: percentile(t, 50), p99: percentile(t, 99), max: elem(t, tuple_size(t) - 1) * 1.0}
  end

  defp percentile(t, p), do: Support.percentile(t, p)

  # -- output ----------------------------------------------------------------------------

  @doc "Renders a `run/1` result as a plain-text table (a string)."
  @spec format(result()) :: String.t()
  def format(r) do
    m = r.machine

    header = [
      "Writer cost vs fan-out: SessionStore.update_variable/3 (NIF), µs per call (median and p99 over ",
      "#{r.batches} batches of #{r.batch_size} calls per row; #{r.warmup_batches} warm-up rounds discarded)\n",
      "machine: #{m.cpu_model}, #{m.logical_processors} logical CPUs, #{m.schedulers_online} schedulers, ",
      "OTP #{m.otp_release}, Elixir #{m.elixir_version}, load average #{inspect(m.load_average)}\n\n"
    ]

    head = [
      String.pad_trailing("watchers on the variable", 40),
      Enum.map(
        ["median", "p99", "min", "vs none", "min vs none", "drain p50", "msgs/watcher"],
        &String.pad_leading(&1, 13)
      ),
      "\n",
      String.duplicate("-", 40 + 13 * 7),
      "\n"
    ]

    rows =
      Enum.map(r.rows, fn key ->
        s = r.results[key]

        [
          String.pad_trailing(s.label, 40),
          Enum.map([s.median_ns, s.p99_ns, s.min_ns], &String.pad_leading(f3(&1 / 1000), 13)),
          String.pad_leading(f2(s.ratio_vs_none) <> "x", 13),
          String.pad_leading(f2(s.min_ratio_vs_none) <> "x", 13),
          String.pad_leading(if(s.kind == :none, do: "-", else: f2(s.drain_ms.p50) <> " ms"), 13),
          String.pad_leading(
            case s.messages_per_watcher do
              nil -> "-"
              x -> Integer.to_string(round(x))
            end,
            13
          ),
          "\n"
        ]
      end)

    notes = [
      "\n\"vs none\" = row median / the no-watcher median, same run (the target's measure); \"min vs none\" = the same\n",
      "for the fastest batch of each row, which moves less between runs on a shared machine. \"drain\" = from the end\n",
      "of a batch until every watcher of the row had the round's end marker (delivery finishing after the writer is\n",
      "done; not in the writer's time). msgs/watcher = messages each watcher received, of ",
      "#{r.results[:none].writes} writes per row: fewer means coalesced.\n\n"
    ]

    verdict =
      for {key, ok} <- Enum.sort(r.target_met) do
        s = r.results[key]

        "#{s.label}: median #{f3(s.median_ns / 1000)} µs = #{f2(s.ratio_vs_none)}x the no-watcher median " <>
          "(#{f3(r.results[:none].median_ns / 1000)} µs), target <= #{f2(r.target_ratio)}x: #{Support.met(ok)}\n"
      end

    IO.iodata_to_binary([header, head, rows, notes, verdict, "whole run #{r.elapsed_ms} ms\n"])
  end

  @doc "Prints `format/1` to stdout."
  def print(result), do: IO.write(format(result))

  defp f2(x), do: Support.fixed(x, 2)
  defp f3(x), do: Support.fixed(x, 3)

  # -- command line ------------------------------------------------------------------------

  @doc "The command-line entry: `--quick`, `--batches N`, `--batch-size N`, `--warmup-batches N`, `--grpc N`, `--json`."
  def main(argv) do
    {opts, rest, invalid} =
      OptionParser.parse(argv,
        strict: [
          quick: :boolean,
          batches: :integer,
          batch_size: :integer,
          warmup_batches: :integer,
          grpc: :integer,
          json: :boolean
        ]
      )

    if rest != [] or invalid != [] do
      IO.puts(
        :stderr,
        "usage: mix run bench/writer_cost.exs [--quick] [--batches N] [--batch-size N] [--warmup-batches N] [--grpc N] [--json]"
      )

      System.halt(2)
    end

    defaults =
      if opts[:quick],
        do: [
          batches: 10,
          batch_size: 100,
          warmup_batches: 1,
          elixir_watchers: [0, 1, 10, 100],
          grpc_watchers: 20
        ],
        else: []

    run_opts =
      defaults
      |> Keyword.merge(Keyword.take(opts, [:batches, :batch_size, :warmup_batches]))
      |> then(fn o -> if opts[:grpc], do: Keyword.put(o, :grpc_watchers, opts[:grpc]), else: o end)
      |> Keyword.put(:progress, &IO.puts(:stderr, "[writer_cost] " <> &1))

    result = run(run_opts)

    if opts[:json] do
      IO.puts(Support.json(result))
    else
      print(result)
    end
  end
end

if Snakepit.Bench.Support.invoked_as_script?(__ENV__.file) do
  Snakepit.Bench.WriterCost.main(System.argv())
end
