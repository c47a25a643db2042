# The benchmark report: runs every benchmark of the store and of watching and writes
# latest.json (every figure), latest.md (the report) and latest.png (the plots).
#
#     bash scripts/bench.sh                    # what users run: installs, builds, then this
#     mix run bench/report.exs                 # full size, into bench/results/
#     mix run bench/report.exs --quick         # every bench tiny, into a new temp directory
#     mix run bench/report.exs --quick --out DIR --python PATH
#
# The Elixir benches (nif_bench, push_latency, writer_cost) run in this VM;
# python_batch.py and `watch_load fan-out` / `watch_load scale` run as child
# processes in their --json modes. Each bench is bounded in time and prints
# progress; one that fails or times out is reported as such and the others
# still run. Everything goes into latest.json, then bench/render_report.py
# (matplotlib when it can be imported) writes latest.md and latest.png from it.
#
# From code (the smoke test): Code.require_file("bench/report.exs") defines
# Snakepit.Bench.Report and runs nothing; Snakepit.Bench.Report.run(quick: true,
# out: dir) runs it and returns where the files are.

Code.require_file("support.exs", __DIR__)
Code.require_file("nif_bench.exs", __DIR__)
Code.require_file("push_latency.exs", __DIR__)
Code.require_file("writer_cost.exs", __DIR__)

defmodule Snakepit.Bench.Report do
  @moduledoc false

  alias Snakepit.Bench.{Nif, PushLatency, Support, WriterCost}

  @root Support.root()
  @render Path.join(@root, "bench/render_report.py")

  @doc """
  The benches, in the order they run: `key`, `title`, `limit_s` (the time
  bound), and either `elixir` (a function of the progress callback, run in
  this VM, with its options in `config`) or `command` (an executable and its
  arguments, run as a child process whose stdout is JSON).
  """
  def plan(quick?, python) do
    size = if quick?, do: :quick, else: :full

    [
      %{
        key: :nif,
        title: "NIF get/update vs GenServer.call",
        limit_s: pick(size, 180, 120),
        config:
          pick(size, [batches: 500, batch_size: 1000],
            batches: 4,
            batch_size: 25,
            warmup_batches: 1
          ),
        elixir: &Nif.run/1
      },
      %{
        key: :python_batch,
        title: "Batch vs sequential gets and sets from Python",
        limit_s: pick(size, 300, 120),
        command:
          [python, Path.join(@root, "bench/python_batch.py"), "--json"] ++
            pick(
              size,
              ~w(--n 1000 --repeats 7 --batch-reps 5),
              ~w(--n 8 --repeats 2 --batch-reps 2)
            )
      },
      %{
        key: :push_latency,
        title: "Push latency Elixir -> Python vs Ping",
        limit_s: pick(size, 300, 120),
        config:
          pick(size, [updates: 2000, warmup: 100, pings: 2000], updates: 20, warmup: 2, pings: 10),
        elixir: &PushLatency.run/1
      },
      %{
        key: :writer_cost,
        title: "Writer cost vs number of watchers",
        limit_s: pick(size, 300, 120),
        config:
          pick(
            size,
            [
              batches: 400,
              batch_size: 1000,
              elixir_watchers: [0, 1, 100, 1000],
              grpc_watchers: 1000
            ],
            batches: 3,
            batch_size: 20,
            warmup_batches: 1,
            elixir_watchers: [0, 1, 5],
            grpc_watchers: 4
          ),
        elixir: &WriterCost.run/1
      },
      %{
        key: :fan_out,
        title: "Fan-out to 100 watcher connections",
        limit_s: pick(size, 180, 120),
        command:
          [watch_load(), "fan-out", "--json"] ++
            pick(
              size,
              ~w(--watchers 100 --updates 200 --interval-ms 5),
              ~w(--quick --watchers 3 --updates 4)
            )
      },
      %{
        key: :scale,
        title: "10,000 streams: fan-out time and memory per stream",
        limit_s: pick(size, 300, 120),
        command:
          [watch_load(), "scale", "--json"] ++
            pick(
              size,
              ~w(--streams 10000 --connections 100 --updates 20),
              ~w(--quick --streams 20 --connections 2 --updates 2)
            )
      }
    ]
  end

  # Not Support.watch_load!/1: a missing binary fails these two benches, not the report.
  defp watch_load,
    do: System.get_env("SNAKEPIT_WATCH_LOAD") || Path.join(@root, "target/release/watch_load")

  defp pick(:full, full, _quick), do: full
  defp pick(:quick, _full, quick), do: quick

  @doc """
  Runs every bench and writes the report. Options:

    * `:quick` — every bench in its tiny configuration (default false)
    * `:out` — the directory for latest.json/md/png (default `bench/results`,
      or a new temporary directory with `:quick`)
    * `:python` — the interpreter for python_batch.py, the push receiver and
      the renderer (default `$SNAKEPIT_PYTHON`, else `.venv/bin/python`)
    * `:progress` — a 1-arity function called with each progress line

  Returns `%{dir, json, markdown, png, failed, render_output}`: the paths
  (`png` nil when the plot was skipped), the keys of the benches that failed
  or timed out, and what the renderer printed.
  """
  def run(opts \\ []) do
    quick? = Keyword.get(opts, :quick, false)
    python = Keyword.get(opts, :python) || Support.python()
    progress = Keyword.get(opts, :progress, fn _ -> :ok end)

    dir =
      cond do
        opts[:out] ->
          opts[:out]

        quick? ->
          Path.join(System.tmp_dir!(), "snakepit-bench-#{System.unique_integer([:positive])}")

        true ->
          Path.join(@root, "bench/results")
      end

    File.mkdir_p!(dir)
    # Loaded now, before the first bench: the machine is described as the run starts.
    load_start = Support.load_averages()
    started_at = DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()
    t0 = System.monotonic_time(:millisecond)
    machine = machine(python, load_start)

    progress.(
      "#{if quick?, do: "quick", else: "full-size"} run on #{machine.cpu_model}, " <>
        "#{machine.logical_processors} logical CPUs, load average #{inspect(load_start)}; writing to #{dir}"
    )

    plan = plan(quick?, python)
    {:ok, sup} = Task.Supervisor.start_link()

    benches =
      try do
        plan
        |> Enum.with_index(1)
        |> Map.new(fn {bench, i} ->
          progress.(
            "(#{i}/#{length(plan)}) #{bench.title}: bounded at #{bench.limit_s} s, load average #{inspect(Support.load_average())}"
          )

          entry = run_bench(bench, sup, dir, fn line -> progress.("  [#{bench.key}] #{line}") end)

          progress.(
            "(#{i}/#{length(plan)}) #{bench.key}: #{entry.status} in #{Float.round(entry.elapsed_s, 1)} s" <>
              if(entry.error, do: ": " <> first_line(entry.error), else: "")
          )

          {bench.key, entry}
        end)
      after
        Process.unlink(sup)
        Process.exit(sup, :kill)
      end

    report = %{
      report: %{
        format: 1,
        quick: quick?,
        command:
          if(quick?, do: "mix run bench/report.exs --quick", else: "bash scripts/bench.sh"),
        started_at: started_at,
        elapsed_s: (System.monotonic_time(:millisecond) - t0) / 1000,
        order: Enum.map(plan, & &1.key),
        git: git()
      },
      machine: machine,
      benches: benches
    }

    json = Path.join(dir, "latest.json")
    File.write!(json <> ".tmp", Support.json(report) <> "\n")
    File.rename!(json <> ".tmp", json)
    progress.("wrote #{json}; rendering the report with #{python}")

    {output, status} =
      System.cmd("timeout", ["-k", "10", "180", python, @render, json], stderr_to_stdout: true)

    if status != 0, do: raise("bench/render_report.py exited with status #{status}:\n#{output}")

    png = Path.join(dir, "latest.png")

    %{
      dir: dir,
      json: json,
      markdown: Path.join(dir, "latest.md"),
      png: if(File.exists?(png), do: png),
      failed: for({k, e} <- benches, e.status != "ok", do: k),
      render_output: output
    }
  end

  # -- running one bench ------------------------------------------------------------

  defp run_bench(bench, sup, dir, progress) do
    load_before = Support.load_averages()
    t0 = System.monotonic_time(:millisecond)

    {status, result, error} =
      if Map.has_key?(bench, :elixir),
        do: run_elixir(bench, sup, progress),
        else: run_command(bench, dir, progress)

    base = %{
      title: bench.title,
      status: status,
      error: error,
      result: result,
      limit_s: bench.limit_s,
      elapsed_s: (System.monotonic_time(:millisecond) - t0) / 1000,
      load_average_start: load_before,
      load_average_end: Support.load_averages()
    }

    if Map.has_key?(bench, :elixir),
      do: Map.put(base, :config, Map.new(bench.config)),
      else:
        Map.put(base, :command, Enum.map_join(bench.command, " ", &Path.relative_to(&1, @root)))
  end

  # In a task of its own, so a crash or the time bound ends only this bench.
  defp run_elixir(bench, sup, progress) do
    task =
      Task.Supervisor.async_nolink(sup, fn ->
        bench.elixir.(bench.config ++ [progress: progress])
      end)

    case Task.yield(task, bench.limit_s * 1000) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} -> {"ok", result, nil}
      {:exit, reason} -> {"failed", nil, String.slice(Exception.format_exit(reason), 0, 4000)}
      nil -> {"timed out", nil, "still running after #{bench.limit_s} s; stopped"}
    end
  end

  # The child's stdout (the JSON) goes to a file; its stderr (progress) comes
  # here line by line. `timeout` ends its whole process group at the bound.
  defp run_command(bench, dir, progress) do
    out = Path.join(dir, "#{bench.key}.json.tmp")
    [exe | args] = bench.command

    port =
      Port.open({:spawn_executable, System.find_executable("sh")}, [
        :binary,
        :exit_status,
        :use_stdio,
        :stderr_to_stdout,
        {:line, 65_536},
        {:env, [{~c"PYTHONUNBUFFERED", ~c"1"}]},
        {:args,
         ["-c", ~s(out="$1"; shift; exec "$@" 2>&1 >"$out"), "sh", out] ++
           ["timeout", "-k", "10", to_string(bench.limit_s), exe | args]}
      ])

    {status, tail} = relay(port, progress, [], (bench.limit_s + 30) * 1000)
    text = if File.exists?(out), do: String.trim(File.read!(out)), else: ""
    File.rm(out)

    cond do
      status in [124, 137] ->
        {"timed out", nil, "still running after #{bench.limit_s} s; stopped"}

      status != 0 ->
        {"failed", nil, "exited with status #{status}:\n#{Enum.join(tail, "\n")}"}

      String.starts_with?(text, "{") and String.ends_with?(text, "}") ->
        {"ok", {:json, text}, nil}

      true ->
        {"failed", nil,
         "exited 0 but printed no JSON object on stdout: #{String.slice(text, 0, 500)}"}
    end
  end

  # Forwards the child's lines to `progress` (keeping the last ones for an
  # error message) until it exits; returns {exit status, the last lines}.
  defp relay(port, progress, tail, limit_ms) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        progress.(line)
        relay(port, progress, Enum.take([line | tail], 30), limit_ms)

      {^port, {:data, {:noeol, chunk}}} ->
        relay(port, progress, Enum.take([chunk | tail], 30), limit_ms)

      {^port, {:exit_status, status}} ->
        {status, Enum.reverse(tail)}
    after
      limit_ms ->
        Port.close(port)
        {124, Enum.reverse(tail)}
    end
  end

  defp first_line(text), do: text |> String.split("\n", parts: 2) |> hd() |> String.slice(0, 200)

  # -- the machine ----------------------------------------------------------------

  defp machine(python, load_start) do
    Support.machine()
    |> Map.delete(:load_average)
    |> Map.merge(%{
      load_average_start: load_start,
      mem_total_kib: mem_total_kib(),
      kernel: cmd_line("uname", ["-sr"]),
      rustc: cmd_line("rustc", ["--version"]),
      python: python_versions(python)
    })
  end

  defp mem_total_kib do
    with {:ok, text} <- File.read("/proc/meminfo"),
         [_, kib] <- Regex.run(~r/^MemTotal:\s*(\d+) kB/m, text) do
      String.to_integer(kib)
    else
      _ -> nil
    end
  end

  defp python_versions(python) do
    code =
      "import platform, grpc, google.protobuf as p; " <>
        "print(platform.python_version(), grpc.__version__, p.__version__)"

    case cmd_line(python, ["-c", code]) do
      nil ->
        %{executable: python}

      line ->
        [version, grpcio, protobuf] = String.split(line)

        %{
          executable: Path.relative_to(python, @root),
          version: version,
          grpcio: grpcio,
          protobuf: protobuf
        }
    end
  rescue
    _ -> %{executable: python}
  end

  # Read-only git: the commit, and whether the work tree differs from it.
  defp git do
    case cmd_line("git", ["-C", @root, "rev-parse", "--short", "HEAD"]) do
      nil ->
        nil

      commit ->
        changes = cmd_line("git", ["-C", @root, "--no-optional-locks", "status", "--porcelain"])
        %{commit: commit, local_changes: changes not in [nil, ""]}
    end
  end

  # The first line of a command's stdout, or nil if it is missing or fails.
  defp cmd_line(exe, args) do
    with path when is_binary(path) <- System.find_executable(exe),
         {out, 0} <- System.cmd(path, args, stderr_to_stdout: false) do
      out |> String.trim() |> String.split("\n") |> hd()
    else
      _ -> nil
    end
  rescue
    _ -> nil
  end

  # -- command line -----------------------------------------------------------------

  @doc "The command-line entry: `--quick`, `--out DIR`, `--python PATH`."
  def main(argv) do
    {opts, rest, invalid} =
      OptionParser.parse(argv, strict: [quick: :boolean, out: :string, python: :string])

    if rest != [] or invalid != [] do
      IO.puts(:stderr, "usage: mix run bench/report.exs [--quick] [--out DIR] [--python PATH]")
      System.halt(2)
    end

    r =
      run(
        quick: opts[:quick] || false,
        out: opts[:out] && Path.expand(opts[:out]),
        python: opts[:python] && Path.expand(opts[:python]),
        progress: &IO.puts(:stderr, "[bench] " <> &1)
      )

    IO.write(r.render_output)

    if r.failed != [] do
      IO.puts(
        :stderr,
        "[bench] FAILED or timed out: #{Enum.join(r.failed, ", ")} (see #{r.markdown})"
      )

      exit({:shutdown, 1})
    end
  end
end

if Snakepit.Bench.Support.invoked_as_script?(__ENV__.file) do
  Snakepit.Bench.Report.main(System.argv())
end
