# Elixir → Rust store through the NIF: time per call of
# SessionStore.update_variable/3 and SessionStore.get_variable/2 on a float
# variable (no watchers), next to a GenServer.call round trip measured in the
# same run.
#
#     mix run bench/nif_bench.exs                      # full run, prints a table
#     mix run bench/nif_bench.exs --quick              # a few seconds
#     mix run bench/nif_bench.exs --batches 500 --batch-size 2000 --json
#
# From code (a test, the report writer): Code.require_file("bench/nif_bench.exs")
# defines Snakepit.Bench.Nif without running anything; then
# Snakepit.Bench.Nif.run(batches: 50, batch_size: 100) returns the figures as a map.

Code.require_file("support.exs", __DIR__)

defmodule Snakepit.Bench.Nif do
  @moduledoc """
  Microbenchmark of the NIF door of `Snakepit.Bridge.SessionStore`.

  A single call is far below the resolution of a timer read, so each sample
  is a *batch* of `batch_size` back-to-back calls timed with
  `:erlang.monotonic_time(:nanosecond)`; the per-call time of a sample is the
  batch time divided by `batch_size`. The operations are interleaved round by
  round (one batch of each per round), so drift and noise on a shared machine
  hit all of them alike, and the ratios compare figures from the same rounds.

  `run/1` returns a map (see `t:result/0`); `print/1` renders it as a table.
  """

  alias Snakepit.Bench.Support
  alias Snakepit.Bridge.{Native, SessionStore}

  @target_ns 2_000

  # The operations, in the order they are timed each round. Each is
  # {key, label, description}. The loops themselves are below (one function
  # clause each, so the loop body is the call and a decrement, nothing else).
  @ops [
    {:update_variable, "SessionStore.update_variable/3", "float, new value each call"},
    {:get_variable, "SessionStore.get_variable/2", "returns the %Variable{} struct"},
    {:get_variable_value, "SessionStore.get_variable_value/2", "returns the value only"},
    {:native_update_variable, "Native.update_variable/5", "the NIF without the Elixir wrapper"},
    {:native_get_variable, "Native.get_variable/2", "the NIF without the Elixir wrapper"},
    {:genserver_call, "GenServer.call/2 round trip", "trivial GenServer, :ping -> :pong"},
    {:empty_loop, "empty loop", "loop overhead (a local call), not subtracted"}
  ]

  @typedoc "Per-call statistics of one operation, in nanoseconds."
  @type stats :: %{
          label: String.t(),
          description: String.t(),
          median_ns: float(),
          p99_ns: float(),
          mean_ns: float(),
          min_ns: float(),
          max_ns: float(),
          batches: pos_integer(),
          calls: pos_integer()
        }

  @type result :: %{
          unit: :ns_per_call,
          batches: pos_integer(),
          batch_size: pos_integer(),
          warmup_batches: non_neg_integer(),
          ops: [atom()],
          results: %{atom() => stats()},
          ratios: %{atom() => float()},
          target_ns: pos_integer(),
          target_met: %{update_variable: boolean(), get_variable: boolean()},
          machine: map(),
          elapsed_ms: non_neg_integer()
        }

  defmodule Echo do
    @moduledoc false
    use GenServer
    @impl true
    def init(state), do: {:ok, state}
    @impl true
    def handle_call(:ping, _from, state), do: {:reply, :pong, state}
  end

  @doc "The operations measured: `[{key, label, description}]`, in timing order."
  def ops, do: @ops

  @doc "The target per call for update_variable and get_variable, in ns."
  def target_ns, do: @target_ns

  @doc """
  Runs the benchmark and returns its figures.

  Options:
    * `:batches` — timed rounds (default 500); each round times one batch of every operation
    * `:batch_size` — calls per batch (default 1000)
    * `:warmup_batches` — untimed rounds first (default `max(3, div(batches, 10))`)
    * `:progress` — a 1-arity function called with a string now and then (default: none)
  """
  @spec run(keyword()) :: result()
  def run(opts \\ []) do
    batches = Support.positive!(opts, :batches, 500)
    batch_size = Support.positive!(opts, :batch_size, 1000)
    warmup = Keyword.get(opts, :warmup_batches, max(3, div(batches, 10)))
    progress = Keyword.get(opts, :progress, fn _ -> :ok end)

    started = System.monotonic_time(:millisecond)
    sid = "bench-nif-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)
    {:ok, _} = SessionStore.register_variable(sid, :x, :float, 0.5)
    {:ok, echo} = GenServer.start_link(Echo, nil)

    try do
      check_ops!(sid, echo)
      progress.("warming up: #{warmup} rounds x #{length(@ops)} ops x #{batch_size} calls")
      Enum.each(1..warmup//1, fn _ -> round_of_batches(sid, echo, batch_size) end)

      progress.("timing: #{batches} rounds x #{length(@ops)} ops x #{batch_size} calls")
      step = max(1, div(batches, 10))

      samples =
        Enum.map(1..batches, fn i ->
          if rem(i, step) == 0, do: progress.("  round #{i}/#{batches}")
          round_of_batches(sid, echo, batch_size)
        end)

      keys = Enum.map(@ops, &elem(&1, 0))

      results =
        Map.new(@ops, fn {key, label, description} ->
          per_call = samples |> Enum.map(&(Map.fetch!(&1, key) / batch_size))

          {key,
           stats(per_call, batch_size) |> Map.merge(%{label: label, description: description})}
        end)

      gs = results.genserver_call.median_ns

      ratios = %{
        update_variable_vs_genserver_call: results.update_variable.median_ns / gs,
        get_variable_vs_genserver_call: results.get_variable.median_ns / gs,
        get_variable_value_vs_genserver_call: results.get_variable_value.median_ns / gs
      }

      %{
        unit: :ns_per_call,
        batches: batches,
        batch_size: batch_size,
        warmup_batches: warmup,
        ops: keys,
        results: results,
        ratios: ratios,
        target_ns: @target_ns,
        target_met: %{
          update_variable: results.update_variable.median_ns <= @target_ns,
          get_variable: results.get_variable.median_ns <= @target_ns
        },
        machine: machine(),
        elapsed_ms: System.monotonic_time(:millisecond) - started
      }
    after
      GenServer.stop(echo)
      SessionStore.delete_session(sid)
    end
  end

  # One batch of each operation; returns %{key => batch nanoseconds}.
  defp round_of_batches(sid, echo, n) do
    Map.new(@ops, fn {key, _, _} -> {key, time_batch(key, sid, echo, n)} end)
  end

  defp time_batch(key, sid, echo, n) do
    t0 = :erlang.monotonic_time(:nanosecond)
    loop(key, sid, echo, n)
    :erlang.monotonic_time(:nanosecond) - t0
  end

  # Fail loudly before timing if an operation does not do what we think.
  defp check_ops!(sid, echo) do
    :ok = SessionStore.update_variable(sid, :x, 0.25)
    {:ok, %{value: 0.25}} = SessionStore.get_variable(sid, :x)
    0.25 = SessionStore.get_variable_value(sid, :x)
    {:ok, _version} = Native.update_variable(sid, :x, 0.5, %{}, 0)
    {:ok, {_id, _name, :float, 0.5, _, _, _, _, _, _}} = Native.get_variable(sid, :x)
    :pong = GenServer.call(echo, :ping)
    :ok
  end

  # The loops. Each writes a different value every call (n / 1024 is exact in
  # binary), so no store could skip an unchanged write.
  defp loop(:update_variable, sid, _echo, n), do: update_loop(sid, n)
  defp loop(:get_variable, sid, _echo, n), do: get_loop(sid, n)
  defp loop(:get_variable_value, sid, _echo, n), do: get_value_loop(sid, n)
  defp loop(:native_update_variable, sid, _echo, n), do: native_update_loop(sid, n)
  defp loop(:native_get_variable, sid, _echo, n), do: native_get_loop(sid, n)
  defp loop(:genserver_call, _sid, echo, n), do: call_loop(echo, n)
  defp loop(:empty_loop, _sid, _echo, n), do: empty_loop(n)

  defp update_loop(_sid, 0), do: :ok

  defp update_loop(sid, n) do
    :ok = SessionStore.update_variable(sid, :x, n / 1024)
    update_loop(sid, n - 1)
  end

  defp get_loop(_sid, 0), do: :ok

  defp get_loop(sid, n) do
    {:ok, _} = SessionStore.get_variable(sid, :x)
    get_loop(sid, n - 1)
  end

  defp get_value_loop(_sid, 0), do: :ok

  defp get_value_loop(sid, n) do
    _ = SessionStore.get_variable_value(sid, :x)
    get_value_loop(sid, n - 1)
  end

  defp native_update_loop(_sid, 0), do: :ok

  defp native_update_loop(sid, n) do
    {:ok, _} = Native.update_variable(sid, :x, n / 1024, %{}, 0)
    native_update_loop(sid, n - 1)
  end

  defp native_get_loop(_sid, 0), do: :ok

  defp native_get_loop(sid, n) do
    {:ok, _} = Native.get_variable(sid, :x)
    native_get_loop(sid, n - 1)
  end

  defp call_loop(_echo, 0), do: :ok

  defp call_loop(echo, n) do
    :pong = GenServer.call(echo, :ping)
    call_loop(echo, n - 1)
  end

  defp empty_loop(0), do: :ok

  defp empty_loop(n) do
    _ = noop(n / 1024)
    empty_loop(n - 1)
  end

  defp noop(x), do: x

  # -- statistics --------------------------------------------------------------

  defp stats(per_call, batch_size) do
    count = length(per_call)
    Map.merge(Support.ns_stats(per_call), %{batches: count, calls: count * batch_size})
  end

  # -- machine -----------------------------------------------------------------

  @doc "The machine the figures come from: cores, CPU model, OTP and Elixir versions, load average."
  defdelegate machine(), to: Support

  # -- output ------------------------------------------------------------------

  @doc "Renders a `run/1` result as a plain-text table (a string)."
  @spec format(result()) :: String.t()
  def format(%{results: results} = r) do
    m = r.machine

    header = [
      "NIF benchmark: time per call, µs (median and p99 over #{r.batches} batches of #{r.batch_size} calls each; ",
      "#{r.warmup_batches} warm-up batches discarded)\n",
      "machine: #{m.cpu_model}, #{m.logical_processors} logical CPUs, #{m.schedulers_online} schedulers, ",
      "OTP #{m.otp_release} (erts #{m.erts_version}#{if m.jit, do: ", JIT", else: ""}), Elixir #{m.elixir_version}, ",
      "load average #{inspect(m.load_average)}\n\n"
    ]

    rows =
      Enum.map(@ops, fn {key, _, _} ->
        s = Map.fetch!(results, key)
        ratio = s.median_ns / results.genserver_call.median_ns

        [
          String.pad_trailing(s.label, 36),
          pad_num(s.median_ns / 1000, 9),
          pad_num(s.p99_ns / 1000, 9),
          pad_num(s.min_ns / 1000, 9),
          String.pad_leading(:erlang.float_to_binary(ratio, decimals: 2) <> "x", 10),
          "   ",
          s.description,
          "\n"
        ]
      end)

    table = [
      String.pad_trailing("operation", 36),
      String.pad_leading("median", 9),
      String.pad_leading("p99", 9),
      String.pad_leading("min", 9),
      String.pad_leading("vs call", 10),
      "   notes\n",
      String.duplicate("-", 36 + 9 * 3 + 10 + 30),
      "\n",
      rows
    ]

    verdict =
      for {key, name} <- [update_variable: "update_variable", get_variable: "get_variable"] do
        median = results[key].median_ns / 1000
        ok = r.target_met[key]

        ratio = r.ratios[:"#{key}_vs_genserver_call"]

        "#{name}: median #{fmt(median)} µs per call, target ≤ #{fmt(r.target_ns / 1000)} µs: " <>
          "#{Support.met(ok)}; " <>
          "#{:erlang.float_to_binary(ratio, decimals: 2)}x a GenServer.call round trip " <>
          "(GenServer.call takes #{:erlang.float_to_binary(1 / ratio, decimals: 2)}x as long)\n"
      end

    IO.iodata_to_binary([
      header,
      table,
      "\n(\"vs call\" = this median / the GenServer.call median, same run; p99 is over per-batch means.)\n\n",
      verdict,
      "total #{r.batches * length(@ops) * r.batch_size} timed calls in #{r.elapsed_ms} ms\n"
    ])
  end

  @doc "Prints `format/1` to stdout."
  def print(result), do: IO.write(format(result))

  defp pad_num(x, width), do: String.pad_leading(fmt(x), width)
  defp fmt(x), do: Support.fixed(x, 3)

  # -- command line ------------------------------------------------------------

  @doc false
  # True when `file` is the script named on this VM's command line
  # (`mix run bench/nif_bench.exs`), false when another file required it.
  defdelegate invoked_as_script?(file), to: Support

  @doc "The command-line entry: `--quick`, `--batches N`, `--batch-size N`, `--json`."
  def main(argv) do
    {opts, rest, invalid} =
      OptionParser.parse(argv,
        strict: [
          quick: :boolean,
          batches: :integer,
          batch_size: :integer,
          warmup_batches: :integer,
          json: :boolean
        ]
      )

    if rest != [] or invalid != [] do
      IO.puts(
        :stderr,
        "usage: mix run bench/nif_bench.exs [--quick] [--batches N] [--batch-size N] [--warmup-batches N] [--json]"
      )

      System.halt(2)
    end

    defaults = if opts[:quick], do: [batches: 30, batch_size: 200], else: []

    run_opts =
      defaults
      |> Keyword.merge(Keyword.take(opts, [:batches, :batch_size, :warmup_batches]))
      |> Keyword.put(:progress, &IO.puts(:stderr, "[nif_bench] " <> &1))

    result = run(run_opts)

    if opts[:json] do
      IO.puts(Support.json(result))
    else
      print(result)
    end
  end
end

if Snakepit.Bench.Nif.invoked_as_script?(__ENV__.file) do
  Snakepit.Bench.Nif.main(System.argv())
end
