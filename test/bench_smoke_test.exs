defmodule Snakepit.BenchSmokeTest do
  # Runs bench/nif_bench.exs in a tiny configuration so the benchmark cannot
  # rot. It asserts the shape and sanity of the figures, never their size:
  # timings on a shared machine are noise as far as a test is concerned.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  @bench Path.expand("../bench/nif_bench.exs", __DIR__)

  # Load the benchmark while this module compiles (so the calls below refer to
  # a known module), capturing what loading prints: it must define
  # Snakepit.Bench.Nif and run nothing (no table, no progress lines).
  {stdout, stderr} = with_io(:stderr, fn -> capture_io(fn -> Code.require_file(@bench) end) end)
  @load_stdout stdout
  @load_stderr stderr

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

    json = bench.json(r)
    assert String.starts_with?(json, "{") and String.ends_with?(json, "}")
    assert json =~ ~s("median_ns":)
  end

  test "the benchmark leaves no session behind" do
    before = MapSet.new(Snakepit.Bridge.SessionStore.list_sessions())
    Snakepit.Bench.Nif.run(batches: 1, batch_size: 1, warmup_batches: 0)
    leftover = MapSet.difference(MapSet.new(Snakepit.Bridge.SessionStore.list_sessions()), before)
    assert Enum.filter(leftover, &String.starts_with?(&1, "bench-nif-")) == []
  end
end
