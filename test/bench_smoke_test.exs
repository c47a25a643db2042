defmodule Snakepit.BenchSmokeTest do
  # Runs bench/nif_bench.exs in a tiny configuration so the benchmark cannot
  # rot. It asserts the shape and sanity of the figures, never their size:
  # timings on a shared machine are noise as far as a test is concerned.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  @bench Path.expand("../bench/nif_bench.exs", __DIR__)
  @push_bench Path.expand("../bench/push_latency.exs", __DIR__)
  @writer_bench Path.expand("../bench/writer_cost.exs", __DIR__)
  @report Path.expand("../bench/report.exs", __DIR__)
  @render Path.expand("../bench/render_report.py", __DIR__)
  @bench_python Path.expand("../bench/.venv/bin/python", __DIR__)

  # Load the benchmarks while this module compiles (so the calls below refer to
  # known modules), capturing what loading prints: each must define its module
  # and run nothing (no table, no progress lines).
  {stdout, stderr} = with_io(:stderr, fn -> capture_io(fn -> Code.require_file(@bench) end) end)
  @load_stdout stdout
  @load_stderr stderr

  {stdout, stderr} =
    with_io(:stderr, fn ->
      capture_io(fn ->
        Code.require_file(@push_bench)
        Code.require_file(@writer_bench)
      end)
    end)

  @watch_load_stdout stdout
  @watch_load_stderr stderr

  {stdout, stderr} = with_io(:stderr, fn -> capture_io(fn -> Code.require_file(@report) end) end)
  @report_load_stdout stdout
  @report_load_stderr stderr

  test "requiring bench/nif_bench.exs defines Snakepit.Bench.Nif without running the benchmark" do
    assert @load_stdout == ""
    assert @load_stderr == ""
    assert Code.ensure_loaded?(Snakepit.Bench.Nif)
    refute Snakepit.Bench.Nif.invoked_as_script?(@bench)
  end

  test "a tiny run returns positive per-call figures for every operation" do
    bench = Snakepit.Bench.Nif
    r = bench.run(batches: 4, batch_size: 25, warmup_batches: 1)

    assert %{unit: :ns_per_call, batches: 4, batch_size: 25, warmup_batches: 1} = r
    assert r.ops == Enum.map(bench.ops(), &elem(&1, 0))

    for key <- [:update_variable, :get_variable, :genserver_call | r.ops] do
      s = Map.fetch!(r.results, key)
      assert is_binary(s.label) and s.label != ""
      assert s.batches == 4
      assert s.calls == 100

      for f <- [:median_ns, :p99_ns, :mean_ns, :min_ns, :max_ns] do
        assert is_float(Map.fetch!(s, f)) and Map.fetch!(s, f) > 0,
               "#{key}.#{f} = #{inspect(Map.fetch!(s, f))}"
      end

      assert s.min_ns <= s.median_ns and s.median_ns <= s.p99_ns and s.p99_ns <= s.max_ns
    end

    for {name, ratio} <- r.ratios do
      assert is_float(ratio) and ratio > 0, "#{name} = #{inspect(ratio)}"
    end

    assert Map.has_key?(r.ratios, :update_variable_vs_genserver_call)
    assert Map.has_key?(r.ratios, :get_variable_vs_genserver_call)
    assert r.target_ns == bench.target_ns()
    assert is_boolean(r.target_met.update_variable) and is_boolean(r.target_met.get_variable)
    assert r.machine.logical_processors >= 1 and is_binary(r.machine.cpu_model)
    assert is_integer(r.elapsed_ms) and r.elapsed_ms >= 0

    table = bench.format(r)
    assert table =~ "SessionStore.update_variable/3"
    assert table =~ "SessionStore.get_variable/2"
    assert table =~ "GenServer.call/2 round trip"
    assert table =~ "µs"

    json = Snakepit.Bench.Support.json(r)
    assert String.starts_with?(json, "{") and String.ends_with?(json, "}")
    assert json =~ ~s("median_ns":)
  end

  test "the benchmark leaves no session behind" do
    before = MapSet.new(Snakepit.Bridge.SessionStore.list_sessions())
    Snakepit.Bench.Nif.run(batches: 1, batch_size: 1, warmup_batches: 0)
    leftover = MapSet.difference(MapSet.new(Snakepit.Bridge.SessionStore.list_sessions()), before)
    assert Enum.filter(leftover, &String.starts_with?(&1, "bench-nif-")) == []
  end

  # -- the watch benchmarks -------------------------------------------------------

  alias Snakepit.Bridge.SessionStore

  defp positive_stats!(stats, keys, what) do
    for k <- keys do
      v = Map.fetch!(stats, k)
      assert is_float(v) and v > 0, "#{what}.#{k} = #{inspect(v)}"
    end
  end

  defp bench_sessions(prefix) do
    Enum.filter(SessionStore.list_sessions(), &String.starts_with?(&1, prefix))
  end

  test "requiring push_latency.exs and writer_cost.exs defines their modules without running them" do
    assert @watch_load_stdout == ""
    assert @watch_load_stderr == ""
    assert Code.ensure_loaded?(Snakepit.Bench.PushLatency)
    assert Code.ensure_loaded?(Snakepit.Bench.WriterCost)
    refute Snakepit.Bench.Nif.invoked_as_script?(@push_bench)
    refute Snakepit.Bench.Nif.invoked_as_script?(@writer_bench)
  end

  @tag timeout: 180_000
  test "a tiny push-latency run returns positive latencies for every receiver mode" do
    bench = Snakepit.Bench.PushLatency
    before = bench_sessions("bench-push-")
    lines = :ets.new(:progress, [:public, :duplicate_bag])
    r = bench.run(updates: 20, warmup: 2, pings: 10, progress: &:ets.insert(lines, {&1}))

    assert %{unit: :us, updates: 20, warmup: 2, interval_ms: 1, pings: 10} = r
    assert r.modes == [:client, :raw, :rust]
    assert :ets.info(lines, :size) > 0

    for mode <- r.modes do
      e = Map.fetch!(r.results, mode)
      assert e.mode == mode and is_binary(e.label)
      assert e.sent == 20
      assert e.received >= 0 and e.received <= 20
      assert e.coalesced == e.sent - e.received
      # Coalesced updates count too (delivered with the next one that arrived).
      assert length(e.samples_us) >= max(e.received, 1) and length(e.samples_us) <= e.sent

      assert Enum.all?(e.samples_us, &(is_float(&1) and &1 > 0)),
             "#{mode}: #{inspect(e.samples_us)}"

      l = e.latency_us
      assert l.count == length(e.samples_us)
      positive_stats!(l, [:p50, :p90, :p99, :p999, :max, :min, :mean], "#{mode}.latency_us")
      assert l.min <= l.p50 and l.p50 <= l.p99 and l.p99 <= l.p999 and l.p999 <= l.max
      positive_stats!(e.ping_us, [:p50, :p99, :max, :min], "#{mode}.ping_us")
      # :pings is per receiver process, split over its phases.
      assert e.ping_us.count == 10
      assert is_float(e.p50_over_ping) and e.p50_over_ping > 0
      assert Enum.all?(Map.values(e.target_met), &is_boolean/1)
      assert Map.keys(e.target_met) |> Enum.sort() == [:p50, :p50_over_ping, :p99]
    end

    assert r.write_gap_ms.count == 3 * (20 + 2 - 1)
    positive_stats!(r.write_gap_ms, [:p50, :max], "write_gap_ms")
    assert r.targets == bench.targets()
    assert Map.has_key?(r.receivers, :python) and Map.has_key?(r.receivers, :rust)
    assert r.machine.logical_processors >= 1

    table = bench.format(r)

    for needle <- [
          "SessionContext",
          "raw stub",
          "tonic",
          "p99.9",
          "Ping",
          "Where a push's time goes",
          "µs"
        ] do
      assert table =~ needle
    end

    json = Snakepit.Bench.Support.json(r)
    assert json =~ ~s("samples_us":[)

    assert bench_sessions("bench-push-") == before
  end

  @tag timeout: 180_000
  test "a tiny writer-cost run returns positive per-call figures for every row" do
    bench = Snakepit.Bench.WriterCost
    before = bench_sessions("bench-writer-")

    r =
      bench.run(
        batches: 3,
        batch_size: 20,
        warmup_batches: 1,
        elixir_watchers: [0, 1, 5],
        grpc_watchers: 4
      )

    assert %{unit: :ns_per_call, batches: 3, batch_size: 20, warmup_batches: 1} = r
    assert r.rows == [:none, :elixir_1, :elixir_5, :grpc_4]

    for key <- r.rows do
      s = Map.fetch!(r.results, key)
      assert s.key == key and is_binary(s.label)
      assert s.batches == 3 and s.calls == 60

      positive_stats!(
        s,
        [:median_ns, :p99_ns, :mean_ns, :min_ns, :max_ns, :ratio_vs_none, :min_ratio_vs_none],
        "#{key}"
      )

      assert s.min_ns <= s.median_ns and s.median_ns <= s.p99_ns and s.p99_ns <= s.max_ns
      assert s.writes == 4 * 21

      if key == :none do
        assert s.watchers == 0 and s.messages_per_watcher == nil
      else
        assert s.watchers > 0
        # Each watcher got at least each round's end marker, at most every write.
        assert s.messages_per_watcher >= 4 and s.messages_per_watcher <= s.writes
        assert s.drain_ms.p50 > 0 and s.drain_ms.p50 <= s.drain_ms.max
      end
    end

    assert r.results.none.ratio_vs_none == 1.0
    assert Map.keys(r.target_met) |> Enum.sort() == [:elixir_5, :grpc_4]
    assert Enum.all?(Map.values(r.target_met), &is_boolean/1)
    assert r.target_ratio == bench.target_ratio()

    table = bench.format(r)

    for needle <- ["no watchers", "5 Elixir watchers", "4 gRPC streams", "vs none", "µs"],
        do: assert(table =~ needle)

    assert Snakepit.Bench.Support.json(r) =~ ~s("ratio_vs_none":)

    assert bench_sessions("bench-writer-") == before
  end

  # -- the report writer ----------------------------------------------------------

  @report_sections [
    "# Benchmark report",
    "## Machine",
    "## Summary",
    "## Plots",
    "## 1. NIF get/update vs GenServer.call",
    "## 2. Batch vs sequential gets and sets from Python",
    "## 3. Push latency Elixir → Python vs Ping",
    "## 4. Writer cost vs number of watchers",
    "## 5. Fan-out to 100 watcher connections",
    "## 6. Scale: 10,000 streams",
    "## Notes"
  ]

  defp imports_matplotlib?(python) do
    match?({_, 0}, System.cmd(python, ["-c", "import matplotlib"], stderr_to_stdout: true))
  end

  defp render!(python, json, extra \\ []) do
    {out, status} = System.cmd(python, [@render, json | extra], stderr_to_stdout: true)
    assert status == 0, "render_report.py exited #{status}:\n#{out}"
    out
  end

  defp assert_png!(path) do
    assert <<0x89, "PNG", _::binary>> = File.read!(path)
  end

  test "requiring report.exs defines Snakepit.Bench.Report without running it" do
    assert @report_load_stdout == ""
    assert @report_load_stderr == ""
    assert Code.ensure_loaded?(Snakepit.Bench.Report)
    refute Snakepit.Bench.Support.invoked_as_script?(@report)
  end

  @tag timeout: 300_000
  test "the report writer runs every bench tiny and writes a complete report" do
    dir =
      Path.join(System.tmp_dir!(), "snakepit-bench-smoke-#{System.unique_integer([:positive])}")

    on_exit(fn -> File.rm_rf(dir) end)
    python = Snakepit.Bench.Support.python()
    lines = :ets.new(:report_progress, [:public, :duplicate_bag])

    r =
      Snakepit.Bench.Report.run(
        quick: true,
        out: dir,
        python: python,
        progress: &:ets.insert(lines, {&1})
      )

    assert r.failed == [], File.read!(r.markdown)
    assert :ets.info(lines, :size) > 0
    assert r.json == Path.join(dir, "latest.json") and r.markdown == Path.join(dir, "latest.md")

    json = File.read!(r.json)

    for key <- ~w(nif python_batch push_latency writer_cost fan_out scale),
        do: assert(json =~ ~s("#{key}":{), "#{key} missing from latest.json")

    assert json =~ ~s("samples_us":[)
    assert json =~ ~s("load_average_start":)

    md = File.read!(r.markdown)

    for heading <- @report_sections,
        do: assert(md =~ heading, "no #{inspect(heading)} in the report")

    # Every bench ran; units, run counts and the machine are stated.
    refute md =~ "**FAILED**"
    refute md =~ "**TIMED OUT**"
    refute md =~ "**NOT RUN**"
    assert length(Regex.scan(~r/\*\*(MET|MISSED)\*\*/, md)) >= 2 * 11
    assert md =~ "reported (no numeric target)"

    for needle <- [
          "µs per call",
          "Unit: **ms**",
          "Unit: **µs**",
          "Runs: ",
          "logical CPUs",
          "load average",
          "Elixir",
          "Python",
          "Redis",
          "etcd"
        ],
        do: assert(md =~ needle, "no #{inspect(needle)} in the report")

    assert md =~ Snakepit.Bench.Support.cpu_model()

    # The plot: drawn when this Python has matplotlib (the test venv does not),
    # else the report says it was skipped and is complete as tables.
    if imports_matplotlib?(python) do
      assert_png!(r.png)
      assert md =~ "![(a) push latency distribution"
    else
      assert r.png == nil
      assert md =~ "**Plot skipped**: matplotlib could not be imported"
    end

    # The bench's own environment (made by scripts/bench.sh), when there is one, draws it.
    if File.exists?(@bench_python) and imports_matplotlib?(@bench_python) do
      assert render!(@bench_python, r.json) =~ "wrote #{Path.join(dir, "latest.png")}"
      assert_png!(Path.join(dir, "latest.png"))
      assert File.read!(r.markdown) =~ "](latest.png)"
    end

    # --no-plot: the skipped path whatever is installed, and no stale PNG is left.
    assert render!(python, r.json, ["--no-plot"]) =~ "plot skipped"
    refute File.exists?(Path.join(dir, "latest.png"))
    md = File.read!(r.markdown)
    assert md =~ "**Plot skipped**: --no-plot was given"
    for heading <- @report_sections, do: assert(md =~ heading)
  end
end
