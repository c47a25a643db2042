# Helpers the Elixir benchmarks in bench/ share: statistics, the machine
# description, the benches' one JSON encoder, number formatting for the
# printed tables, option checks, where the executables are, and waiting for a
# session's watcher count. Each bench file requires
# this one (`Code.require_file("support.exs", __DIR__)`); requiring it
# defines `Snakepit.Bench.Support` and runs nothing.

defmodule Snakepit.Bench.Support do
  @moduledoc false

  alias Snakepit.Bridge.SessionStore

  @root Path.expand("..", __DIR__)

  @doc "The repository's root directory."
  def root, do: @root

  # -- command line ----------------------------------------------------------------

  @doc """
  True when `file` is the script named on this VM's command line
  (`mix run bench/x.exs`), false when another file required it.
  """
  def invoked_as_script?(file) do
    :init.get_plain_arguments()
    |> Enum.any?(fn arg -> Path.expand(to_string(arg)) == file end)
  end

  @doc """
  Waits until the monotonic clock reads `at_ms` (`:erlang.monotonic_time(:millisecond)`).
  An absolute timer: a paced writer that runs late does not push its later
  writes back.
  """
  def wait_until(at_ms) do
    ref = :erlang.start_timer(at_ms, self(), :bench_tick, abs: true)

    receive do
      {:timeout, ^ref, :bench_tick} -> :ok
    end
  end

  @doc "`opts[key]` (or `default`), which must be a positive integer."
  def positive!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      n when is_integer(n) and n > 0 ->
        n

      other ->
        raise ArgumentError, "#{inspect(key)} must be a positive integer, got: #{inspect(other)}"
    end
  end

  # -- statistics --------------------------------------------------------------------

  @doc """
  The `p`-th percentile of a sorted tuple, interpolating linearly between
  the closest ranks (numpy's default), as a float.
  """
  def percentile(sorted, p) when is_tuple(sorted) and tuple_size(sorted) > 0 do
    n = tuple_size(sorted)
    rank = p / 100 * (n - 1)
    lo = floor(rank)
    hi = min(lo + 1, n - 1)
    a = elem(sorted, lo)
    b = elem(sorted, hi)
    a + (b - a) * (rank - lo) * 1.0
  end

  @doc """
  Median, p99, mean, min and max (floats, keys `median_ns` … `max_ns`) of
  per-call times in nanoseconds, one per batch: what the NIF and writer-cost
  benches report per row.
  """
  def ns_stats([_ | _] = values) do
    sorted = Enum.sort(values)
    t = List.to_tuple(sorted)
    count = tuple_size(t)

    %{
      median_ns: percentile(t, 50),
      p99_ns: percentile(t, 99),
      mean_ns: Enum.sum(sorted) / count,
      min_ns: elem(t, 0) * 1.0,
      max_ns: elem(t, count - 1) * 1.0
    }
  end

  # -- output --------------------------------------------------------------------------

  @doc "`x` with `decimals` decimals, for the printed tables; \"-\" for nil."
  def fixed(nil, _decimals), do: "-"
  def fixed(x, decimals), do: :erlang.float_to_binary(x * 1.0, decimals: decimals)

  @doc "How a target's verdict is printed."
  def met(true), do: "MET"
  def met(false), do: "MISSED"

  # -- the machine ---------------------------------------------------------------------

  @doc """
  The machine the figures come from: cores, CPU model, OTP and Elixir
  versions, and the 1-minute load average now.
  """
  def machine do
    %{
      logical_processors: :erlang.system_info(:logical_processors),
      schedulers_online: System.schedulers_online(),
      cpu_model: cpu_model(),
      otp_release: to_string(:erlang.system_info(:otp_release)),
      erts_version: to_string(:erlang.system_info(:version)),
      elixir_version: System.version(),
      jit: jit?(),
      load_average: load_average()
    }
  end

  @doc "The 1-minute load average (other work on the machine skews figures), or nil."
  def load_average do
    case load_averages() do
      [one | _] -> one
      _ -> nil
    end
  end

  @doc "The 1-, 5- and 15-minute load averages from /proc/loadavg, or nil."
  def load_averages do
    case File.read("/proc/loadavg") do
      {:ok, text} ->
        text |> String.split() |> Enum.take(3) |> Enum.map(&(Float.parse(&1) |> elem(0)))

      _ ->
        nil
    end
  rescue
    _ -> nil
  end

  @doc "The CPU model from /proc/cpuinfo (\"unknown\" where there is none)."
  def cpu_model do
    with {:ok, text} <- File.read("/proc/cpuinfo"),
         [_, model] <- Regex.run(~r/^model name\s*:\s*(.+)$/m, text) do
      String.trim(model)
    else
      _ -> "unknown"
    end
  end

  defp jit? do
    :erlang.system_info(:emu_flavor) == :jit
  rescue
    _ -> false
  end

  # -- JSON ----------------------------------------------------------------------------

  @doc """
  A minimal JSON encoder for the benches' result maps (no dependency on a
  JSON library): maps (keys sorted), lists, strings, atoms, numbers,
  booleans and nil. `{:json, text}` is spliced in verbatim: text that is
  already JSON (another bench's `--json` output).
  """
  def json({:json, text}) when is_binary(text), do: text

  def json(term) when is_map(term) do
    body =
      term
      |> Enum.sort_by(fn {k, _} -> to_string(k) end)
      |> Enum.map_join(",", fn {k, v} -> json(to_string(k)) <> ":" <> json(v) end)

    "{" <> body <> "}"
  end

  def json(list) when is_list(list), do: "[" <> Enum.map_join(list, ",", &json/1) <> "]"
  def json(b) when is_boolean(b), do: to_string(b)
  def json(nil), do: "null"
  def json(a) when is_atom(a), do: json(Atom.to_string(a))
  def json(n) when is_integer(n), do: Integer.to_string(n)
  def json(f) when is_float(f), do: :erlang.float_to_binary(f, [:short])

  def json(s) when is_binary(s) do
    escaped =
      s
      |> String.replace("\\", "\\\\")
      |> String.replace("\"", "\\\"")
      |> String.replace("\n", "\\n")
      |> String.replace("\r", "\\r")
      |> String.replace("\t", "\\t")
      |> String.replace(~r/[\x00-\x1f]/, fn <<c>> ->
        "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
      end)

    "\"" <> escaped <> "\""
  end

  # -- executables ---------------------------------------------------------------------

  @doc "The Python interpreter: `$SNAKEPIT_PYTHON`, else the repo's `.venv/bin/python`."
  def python, do: System.get_env("SNAKEPIT_PYTHON") || Path.join(@root, ".venv/bin/python")

  @doc """
  The Rust load client: `$SNAKEPIT_WATCH_LOAD`, else `target/release/watch_load`;
  raises with `hint` (how to do without it) when it is missing.
  """
  def watch_load!(hint) do
    path = System.get_env("SNAKEPIT_WATCH_LOAD") || Path.join(@root, "target/release/watch_load")

    unless File.exists?(path) do
      raise "#{path} not found: build it with `cargo build --release -p watch_load`, #{hint}"
    end

    path
  end

  # -- sessions ------------------------------------------------------------------------

  @doc """
  Polls the session's watcher count (gRPC streams plus Elixir subscriptions)
  every `poll_ms` until it is `n`; raises after `deadline_ms`.
  """
  def wait_watchers(sid, n, deadline_ms \\ 30_000, poll_ms \\ 2) do
    wait_watchers_until(sid, n, System.monotonic_time(:millisecond) + deadline_ms, poll_ms)
  end

  defp wait_watchers_until(sid, n, t_end, poll_ms) do
    {:ok, %{watcher_count: count}} = SessionStore.get_session(sid)

    cond do
      count == n ->
        :ok

      System.monotonic_time(:millisecond) > t_end ->
        raise "watcher_count of #{sid} stayed at #{count}, expected #{n}"

      true ->
        Process.sleep(poll_ms)
        wait_watchers_until(sid, n, t_end, poll_ms)
    end
  end
end
