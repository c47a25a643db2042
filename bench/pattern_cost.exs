# What pattern watches cost: the time per SessionStore.update_variable/3 call
# (NIF) on a variable no pattern matches, in a session with 1,000 Elixir
# pattern watchers (`patterns: ["temp_*"]`) and in a session with none,
# measured alternately in one run; and the time per register_variable/5 of a
# matching variable, where the pattern matching happens.
#
#     mix run bench/pattern_cost.exs                  # full: 400 rounds x 1000 writes, 40 x 50 registrations
#     mix run bench/pattern_cost.exs --quick          # tiny (a few seconds)
#     mix run bench/pattern_cost.exs --watchers 1000 --batches 300 --json
#
# From code: Code.require_file("bench/pattern_cost.exs") defines
# Snakepit.Bench.PatternCost without running anything; then
# Snakepit.Bench.PatternCost.run(batches: 20) returns the figures as a map.

Code.require_file("support.exs", __DIR__)

defmodule Snakepit.Bench.PatternCost do
  @moduledoc """
  What pattern watchers cost a writer, and where their cost went.

  Two sessions: `watched`, with `watchers` Elixir processes that each
  `watch_variables(sid, [], patterns: ["temp_*"])` and drain their mailbox,
  and `quiet`, with no watcher at all. Each has an integer variable `other`,
  which no pattern matches.

  **Writes.** A sample is a batch of `batch_size` back-to-back
  `SessionStore.update_variable/3` calls on `other` (a new value each call),
  timed with `:erlang.monotonic_time(:nanosecond)`; per-call time = batch
  time / `batch_size`. Each round times one batch in each session, ABAB:
  the order flips every round, so drift hits both alike. Patterns are
  matched when a variable is registered, never on a write, so the watched
  write should cost what a write on a session with watchers (none on this
  variable) costs.

  **Registrations.** A sample is one `register_variable/5` call of a new
  integer variable `temp_<round>_<i>`, which every pattern matches, timed
  alone; a round has `registrations` of them in each session, alternating
  and ABAB across rounds. In the watched session each registration is
  matched against every watcher's patterns and published to all of them;
  delivery runs on other threads, so after each watched registration the
  bench waits until every watcher has it (`drain_ms`, not in the writer's
  time) before the next call: on a small machine delivery of the previous
  one would otherwise share the CPUs with the next call. A third row
  registers `pressure_<round>_<i>` in the watched session, which no pattern
  matches: the scan of the 1,000 watchers' patterns without any publishing.

  `run/1` returns a map; `format/1` renders it.
  """

  alias Snakepit.Bench.Support
  alias Snakepit.Bridge.{SessionStore, VariableUpdate}

  @wait_ms 60_000
  @pattern "temp_*"

  @doc """
  Runs the benchmark and returns its figures.

  Options:
    * `:watchers` — pattern watcher processes in the watched session (default 1000)
    * `:batches` — timed write rounds (default 400), each one batch per session
    * `:batch_size` — writes per batch (default 1000)
    * `:warmup_batches` — untimed write rounds first (default `max(3, div(batches, 10))`)
    * `:reg_batches` — timed registration rounds (default 40)
    * `:registrations` — registrations per round and session (default 50)
    * `:progress` — a 1-arity function called with a string now and then
  """
  @spec run(keyword()) :: map()
  def run(opts \\ []) do
    watchers = Support.positive!(opts, :watchers, 1000)
    batches = Support.positive!(opts, :batches, 400)
    batch_size = Support.positive!(opts, :batch_size, 1000)
    warmup = Keyword.get(opts, :warmup_batches, max(3, div(batches, 10)))
    reg_batches = Support.positive!(opts, :reg_batches, 40)
    registrations = Support.positive!(opts, :registrations, 50)
    progress = Keyword.get(opts, :progress, fn _ -> :ok end)

    if 2 * (reg_batches + 1) * registrations + 1 > 10_000,
      do:
        raise(
          ArgumentError,
          "2 * (reg_batches + 1) * registrations must stay under 10,000 variables"
        )

    started = System.monotonic_time(:millisecond)
    prefix = "bench-pattern-#{System.unique_integer([:positive])}"
    quiet = "#{prefix}-quiet"
    watched = "#{prefix}-watched"

    for sid <- [quiet, watched] do
      {:ok, _} = SessionStore.create_session(sid)
      {:ok, _} = SessionStore.register_variable(sid, :other, :integer, 0)
    end

    parent = self()

    try do
      progress.(
        "starting #{watchers} Elixir watcher processes with patterns: [#{inspect(@pattern)}]"
      )

      pids = for _ <- 1..watchers, do: spawn_link(fn -> watcher(watched, parent) end)

      Enum.each(pids, fn pid ->
        receive do
          {:watching, ^pid} -> :ok
        after
          @wait_ms -> raise "a pattern watcher did not start"
        end
      end)

      Support.wait_watchers(watched, watchers, @wait_ms, 5)

      # -- writes on a variable no pattern matches
      counter = :counters.new(1, [])
      progress.("writes, warming up: #{warmup} rounds x 2 sessions x #{batch_size} calls")
      Enum.each(1..warmup//1, fn r -> write_round(quiet, watched, r, batch_size, counter) end)
      progress.("writes, timing: #{batches} rounds x 2 sessions x #{batch_size} calls (ABAB)")

      writes =
        Enum.map(1..batches, fn r -> write_round(quiet, watched, r, batch_size, counter) end)

      write_quiet = Support.ns_stats(Enum.map(writes, &(elem(&1, 0) / batch_size)))
      write_watched = Support.ns_stats(Enum.map(writes, &(elem(&1, 1) / batch_size)))

      # -- registrations of matching variables (one untimed round first)
      progress.(
        "registrations: #{reg_batches} rounds x 2 sessions x #{registrations} calls (ABAB)"
      )

      regs =
        Enum.flat_map(0..reg_batches, fn r ->
          samples = reg_round(quiet, watched, r, registrations, watchers)
          if r == 0, do: [], else: samples
        end)

      reg_quiet = Support.ns_stats(Enum.map(regs, &(elem(&1, 0) * 1.0)))
      reg_watched = Support.ns_stats(Enum.map(regs, &(elem(&1, 1) * 1.0)))
      reg_unmatched = Support.ns_stats(Enum.map(regs, &(elem(&1, 3) * 1.0)))
      drains = regs |> Enum.map(&elem(&1, 2)) |> Enum.sort() |> List.to_tuple()

      received = stop_watchers(pids)

      %{
        unit: :ns_per_call,
        watchers: watchers,
        pattern: @pattern,
        batches: batches,
        batch_size: batch_size,
        warmup_batches: warmup,
        reg_batches: reg_batches,
        registrations: registrations,
        write: %{
          quiet: write_quiet,
          watched: write_watched,
          ratio: write_watched.median_ns / write_quiet.median_ns,
          min_ratio: write_watched.min_ns / write_quiet.min_ns
        },
        register: %{
          quiet: reg_quiet,
          watched: reg_watched,
          unmatched: reg_unmatched,
          ratio: reg_watched.median_ns / reg_quiet.median_ns,
          unmatched_ratio: reg_unmatched.median_ns / reg_quiet.median_ns,
          drain_ms_p50: Support.percentile(drains, 50),
          drain_ms_max: elem(drains, tuple_size(drains) - 1) * 1.0,
          # Every registration of the watched session (the untimed round
          # included) reaches every watcher: nothing to coalesce.
          registered_per_watcher: received / watchers,
          registered_expected: (reg_batches + 1) * registrations
        },
        machine: Support.machine(),
        elapsed_ms: System.monotonic_time(:millisecond) - started
      }
    after
      SessionStore.delete_session(quiet)
      SessionStore.delete_session(watched)
    end
  end

  # -- watchers ------------------------------------------------------------------

  defp watcher(sid, parent) do
    {:ok, ref} = SessionStore.watch_variables(sid, [], patterns: [@pattern])
    send(parent, {:watching, self()})
    watcher_loop(ref, parent, 0)
  end

  # Counts registrations and acks each one.
  defp watcher_loop(ref, parent, count) do
    receive do
      {:snakepit_variable_update, ^ref, %VariableUpdate{update_type: :registered, name: name}} ->
        send(parent, {:drained, name})
        watcher_loop(ref, parent, count + 1)

      {:snakepit_variable_update, ^ref, _} ->
        watcher_loop(ref, parent, count)

      {:count, from} ->
        send(from, {:count, self(), count})
    end
  end

  defp stop_watchers(pids) do
    Enum.each(pids, &send(&1, {:count, self()}))

    Enum.reduce(pids, 0, fn pid, acc ->
      receive do
        {:count, ^pid, n} -> acc + n
      after
        @wait_ms -> raise "a pattern watcher did not answer"
      end
    end)
  end

  # -- rounds --------------------------------------------------------------------

  # {quiet batch ns, watched batch ns}; the order flips every round (ABAB).
  defp write_round(quiet, watched, round, n, counter) do
    time = fn sid ->
      base = :counters.get(counter, 1)
      :counters.add(counter, 1, n)
      t0 = :erlang.monotonic_time(:nanosecond)
      update_loop(sid, n, base)
      :erlang.monotonic_time(:nanosecond) - t0
    end

    if rem(round, 2) == 0 do
      q = time.(quiet)
      {q, time.(watched)}
    else
      w = time.(watched)
      {time.(quiet), w}
    end
  end

  defp update_loop(_sid, 0, _base), do: :ok

  defp update_loop(sid, n, base) do
    :ok = SessionStore.update_variable(sid, :other, base + n)
    update_loop(sid, n - 1, base)
  end

  # [{quiet ns, watched ns, watched drain ms}], one per registration; each
  # timed alone, and the watched one drained before the next, so its time is
  # the writer's own, not shared with delivering the previous ones. The
  # order of the two sessions flips every round (ABAB).
  defp reg_round(quiet, watched, round, n, watchers) do
    time = fn sid, name ->
      t0 = :erlang.monotonic_time(:nanosecond)
      {:ok, _} = SessionStore.register_variable(sid, name, :integer, 0)
      :erlang.monotonic_time(:nanosecond) - t0
    end

    drain = fn name ->
      t0 = :erlang.monotonic_time(:nanosecond)
      await_acks(name, watchers)
      (:erlang.monotonic_time(:nanosecond) - t0) / 1.0e6
    end

    for i <- 1..n do
      name = "temp_#{round}_#{i}"
      # No pattern matches it: the scan of the patterns alone, nothing published.
      unmatched = time.(watched, "pressure_#{round}_#{i}")

      if rem(round, 2) == 0 do
        q = time.(quiet, name)
        w = time.(watched, name)
        {q, w, drain.(name), unmatched}
      else
        w = time.(watched, name)
        d = drain.(name)
        {time.(quiet, name), w, d, unmatched}
      end
    end
  end

  defp await_acks(_name, 0), do: :ok

  defp await_acks(name, left) do
    receive do
      {:drained, ^name} -> await_acks(name, left - 1)
    after
      @wait_ms -> raise "#{left} watchers never got #{name}"
    end
  end

  # -- output --------------------------------------------------------------------

  @doc "Renders a `run/1` result as plain text (a string)."
  def format(r) do
    m = r.machine
    w = r.write
    g = r.register

    row = fn label, s ->
      [
        String.pad_trailing(label, 52),
        Enum.map([s.median_ns, s.p99_ns, s.min_ns], &String.pad_leading(f0(&1), 12)),
        "\n"
      ]
    end

    head = [
      String.pad_trailing("ns per call", 52),
      Enum.map(["median", "p99", "min"], &String.pad_leading(&1, 12)),
      "\n",
      String.duplicate("-", 52 + 36),
      "\n"
    ]

    IO.iodata_to_binary([
      "Pattern watch cost: #{r.watchers} Elixir watchers with patterns: [#{inspect(r.pattern)}] vs none\n",
      "machine: #{m.cpu_model}, #{m.logical_processors} logical CPUs, #{m.schedulers_online} schedulers, ",
      "OTP #{m.otp_release}, Elixir #{m.elixir_version}, load average #{inspect(m.load_average)}\n\n",
      "update_variable/3 on a variable no pattern matches: #{r.batches} rounds (ABAB) x ",
      "#{r.batch_size} calls per session, #{r.warmup_batches} warm-up rounds discarded\n",
      head,
      row.("no watchers", w.quiet),
      row.("#{r.watchers} pattern watchers", w.watched),
      "ratio (median / median): #{f2(w.ratio)}x; fastest batch / fastest batch: #{f2(w.min_ratio)}x\n\n",
      "register_variable/5 of a matching variable, each call timed alone: #{r.reg_batches} rounds (ABAB) x ",
      "#{r.registrations} calls per session, 1 warm-up round discarded\n",
      head,
      row.("no watchers", g.quiet),
      row.("#{r.watchers} pattern watchers", g.watched),
      row.("#{r.watchers} pattern watchers, a name none matches", g.unmatched),
      "ratio (median / median): #{f2(g.ratio)}x (none matches: #{f2(g.unmatched_ratio)}x); until every watcher had a registration: ",
      "p50 #{f2(g.drain_ms_p50)} ms, max #{f2(g.drain_ms_max)} ms (not in the writer's time)\n",
      ":registered updates per watcher: #{f0(g.registered_per_watcher)} ",
      "of #{g.registered_expected} registrations\n",
      "whole run #{r.elapsed_ms} ms\n"
    ])
  end

  @doc "Prints `format/1` to stdout."
  def print(result), do: IO.write(format(result))

  defp f0(x), do: Support.fixed(x, 0)
  defp f2(x), do: Support.fixed(x, 2)

  # -- command line ----------------------------------------------------------------

  @doc "The command-line entry: `--quick`, `--watchers N`, `--batches N`, `--batch-size N`, `--warmup-batches N`, `--reg-batches N`, `--registrations N`, `--json`."
  def main(argv) do
    switches = [
      quick: :boolean,
      watchers: :integer,
      batches: :integer,
      batch_size: :integer,
      warmup_batches: :integer,
      reg_batches: :integer,
      registrations: :integer,
      json: :boolean
    ]

    {opts, rest, invalid} = OptionParser.parse(argv, strict: switches)

    if rest != [] or invalid != [] do
      IO.puts(
        :stderr,
        "usage: mix run bench/pattern_cost.exs [--quick] [--watchers N] [--batches N] [--batch-size N] " <>
          "[--warmup-batches N] [--reg-batches N] [--registrations N] [--json]"
      )

      System.halt(2)
    end

    defaults =
      if opts[:quick],
        do: [batches: 20, batch_size: 200, warmup_batches: 2, reg_batches: 5, registrations: 10],
        else: []

    run_opts =
      defaults
      |> Keyword.merge(Keyword.drop(opts, [:quick, :json]))
      |> Keyword.put(:progress, &IO.puts(:stderr, "[pattern_cost] " <> &1))

    result = run(run_opts)
    if opts[:json], do: IO.puts(Support.json(result)), else: print(result)
  end
end

if Snakepit.Bench.Support.invoked_as_script?(__ENV__.file) do
  Snakepit.Bench.PatternCost.main(System.argv())
end
