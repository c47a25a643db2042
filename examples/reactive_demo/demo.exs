# The reactive demo: Elixir decides, Python workers react, both directions live.
#
#     mix run examples/reactive_demo/demo.exs [--seconds 20] [--workers 3]
#
# An Elixir app starts the bridge server under its supervisor, registers
# temperature / strategy / model / feedback, and launches Python workers that
# watch the first three (no polling) and write feedback. An optimizer process
# watches feedback and retunes temperature; a script switches strategy and
# model, and kills and restarts one worker mid-run. It ends with a summary and
# a consistency check; the exit status is 0 only if every worker's last seen
# values equal the store's.

defmodule ReactiveDemo do
  alias Snakepit.Bridge.{Server, SessionStore, VariableUpdate}

  @session "reactive-demo"
  @watched ["model", "strategy", "temperature"]

  def main(argv) do
    {opts, _, _} = OptionParser.parse(argv, strict: [seconds: :integer, workers: :integer])
    seconds = Keyword.get(opts, :seconds, 20)
    n_workers = Keyword.get(opts, :workers, 3)
    t0 = System.monotonic_time(:millisecond)
    :persistent_term.put({__MODULE__, :t0}, t0)

    {:ok, _sup} =
      Supervisor.start_link([{Server, host: "127.0.0.1", port: 0}], strategy: :one_for_one)

    address = "127.0.0.1:#{Server.port()}"
    SessionStore.delete_session(@session)
    {:ok, _} = SessionStore.create_session(@session)

    {:ok, _} =
      SessionStore.register_variable(@session, :temperature, :float, 0.7,
        constraints: %{min: 0.0, max: 2.0}
      )

    {:ok, _} =
      SessionStore.register_variable(@session, :strategy, :choice, "greedy",
        constraints: %{choices: ["greedy", "beam", "sample"]}
      )

    {:ok, _} =
      SessionStore.register_variable(@session, :model, :module, "tiny-lm",
        constraints: %{allowed_modules: ["tiny-lm", "base-lm", "large-lm"]}
      )

    {:ok, _} =
      SessionStore.register_variable(@session, :feedback, :float, 0.0,
        constraints: %{min: -1.0, max: 2.0}
      )

    say(
      "bridge listening on #{address}; session #{@session}: temperature 0.7, strategy greedy, model tiny-lm"
    )

    say("workers run on a session token: they can reach #{@session} and nothing else")
    workers = Map.new(1..n_workers, fn id -> {id, start_worker(id)} end)
    Enum.each(workers, fn {id, port} -> await_ready(id, port) end)

    {:ok, optimizer} = ReactiveDemo.Optimizer.start_link(@session)

    script = [
      {0.25, {:set, :strategy, "beam"}},
      {0.40, {:set, :model, "large-lm"}},
      {0.55, {:restart, 2}},
      {0.70, {:set, :strategy, "sample"}}
    ]

    state = %{workers: workers, reactions: [], switches: %{}, scripted: 0}
    state = run(script, seconds * 1000, t0, state)

    decisions = ReactiveDemo.Optimizer.stop(optimizer)
    state = drain(state, 200)
    {ok?, state} = consistency(state)
    summary(state, decisions, ok?)
    SessionStore.delete_session(@session)
    System.halt(if ok?, do: 0, else: 1)
  end

  # -- timeline ------------------------------------------------------------------

  defp run(script, total_ms, t0, state) do
    now = System.monotonic_time(:millisecond) - t0

    case script do
      [{at, action} | rest] when now >= at * total_ms ->
        run(rest, total_ms, t0, act(action, state))

      _ when now >= total_ms ->
        state

      _ ->
        run(script, total_ms, t0, handle_next(state, 50))
    end
  end

  defp act({:set, name, value}, state) do
    old = SessionStore.get_variable_value(@session, name)
    :ok = SessionStore.update_variable(@session, name, value, stamp(%{reason: "scripted"}))
    say("elixir   → #{name} #{old} → #{value} (scripted)")
    %{state | scripted: state.scripted + 1}
  end

  defp act({:restart, id}, state) do
    port = state.workers[id]
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
    say("elixir   ✖ killed worker #{id} (SIGKILL); restarting it")
    new_port = start_worker(id)
    values = await_ready(id, new_port)
    # The optimizer keeps writing meanwhile, so the store may have moved on
    # since the worker's initial values; its watch must then catch up.
    verdict =
      case settle(new_port) do
        {true, _} ->
          "matches the store"

        {false, {store, seen}} ->
          "DIFFERS from the store: it has #{format_values(seen)}, the store #{format_values(store)}"
      end

    say("worker #{id} resumed with #{format_values(values)} — #{verdict}")
    %{state | workers: Map.put(state.workers, id, new_port)}
  end

  def stamp(metadata), do: Map.put(metadata, :sent_at_ns, :os.system_time(:nanosecond))

  # -- worker processes ------------------------------------------------------------

  defp start_worker(id) do
    python = System.get_env("SNAKEPIT_PYTHON") || Path.expand(".venv/bin/python")
    script = Path.expand("worker.py", __DIR__)

    Port.open({:spawn_executable, python}, [
      :binary,
      :exit_status,
      :use_stdio,
      :stderr_to_stdout,
      {:line, 65_536},
      args: [script, Integer.to_string(id)],
      env: [{~c"PYTHONUNBUFFERED", ~c"1"} | worker_env()]
    ])
  end

  # Address, session and a token for this session only, as Port.open wants them.
  defp worker_env do
    for {k, v} <- Server.worker_env(@session), do: {String.to_charlist(k), String.to_charlist(v)}
  end

  defp await_ready(id, port) do
    receive do
      {^port, {:data, {:eol, "ready " <> rest}}} ->
        values = parse_values(rest)
        say("worker #{id} ready: watching #{format_values(values)}")
        values

      {^port, {:data, {:eol, other}}} ->
        IO.puts("  [worker #{id}] #{other}")
        await_ready(id, port)

      {^port, {:exit_status, status}} ->
        raise "worker #{id} exited with status #{status} before it was ready"
    after
      30_000 -> raise "worker #{id} was not ready within 30 s"
    end
  end

  defp handle_next(state, timeout) do
    receive do
      {port, {:data, {:eol, line}}} when is_port(port) -> handle_line(line, state)
      {port, {:exit_status, _}} when is_port(port) -> state
    after
      timeout -> state
    end
  end

  defp drain(state, timeout) do
    receive do
      {port, {:data, {:eol, line}}} when is_port(port) -> drain(handle_line(line, state), timeout)
    after
      timeout -> state
    end
  end

  defp handle_line("react " <> rest, state) do
    f = fields(rest)
    id = f["worker"]

    say(
      "worker #{id} ← #{f["name"]} #{f["old"]} → #{f["value"]}, reacted #{f["latency_us"]} µs after the write"
    )

    switch = {elapsed_s(), f["name"], f["old"], f["value"]}

    latency =
      case Float.parse(f["latency_us"]) do
        {us, _} -> [us]
        :error -> []
      end

    %{
      state
      | reactions: latency ++ state.reactions,
        switches: Map.update(state.switches, id, [switch], &[switch | &1])
    }
  end

  defp handle_line(other, state) do
    IO.puts("  [python] #{other}")
    state
  end

  # -- the end ---------------------------------------------------------------------

  defp consistency(state) do
    results = for {id, port} <- state.workers, into: %{}, do: {id, settle(port)}
    {store, _} = results |> Map.values() |> List.last() |> elem(1)
    reports = Map.new(results, fn {id, {_, {_, seen}}} -> {id, seen} end)

    ok? =
      Enum.all?(results, fn {_, {ok?, _}} -> ok? end) and
        Enum.all?(reports, fn {_, seen} -> seen == store end)

    {ok?, Map.put(state, :reports, {store, reports})}
  end

  # Whether the worker's last seen values equal the store's, asking again for
  # up to a second while its watch delivers writes made just before.
  defp settle(port, attempts \\ 20) do
    store = current_values()
    seen = report(port)

    cond do
      seen == store -> {true, {store, seen}}
      attempts == 0 -> {false, {store, seen}}
      true -> Process.sleep(50) && settle(port, attempts - 1)
    end
  end

  defp report(port) do
    Port.command(port, "REPORT\n")

    receive do
      {^port, {:data, {:eol, "report " <> rest}}} -> parse_values(rest)
    after
      5000 -> :no_answer
    end
  end

  defp current_values do
    for name <- @watched, into: %{} do
      {:ok, var} = SessionStore.get_variable(@session, name)
      {name, {var.version, to_string(var.value)}}
    end
  end

  defp summary(state, optimizer, ok?) do
    {:ok, feedback} = SessionStore.get_variable(@session, :feedback)
    latencies = Enum.sort(state.reactions)
    IO.puts("\n== summary ==")

    IO.puts(
      "Elixir → Python: #{optimizer.decisions} optimizer decisions + #{state.scripted} scripted changes, each pushed to every worker"
    )

    IO.puts(
      "Python → Elixir: #{feedback.version - 1} feedback writes; the optimizer received #{optimizer.received} (the rest coalesced while it was busy)"
    )

    if latencies != [] do
      IO.puts(
        "reaction latency, Elixir write → Python reaction: p50 #{pct(latencies, 0.5)} µs, p99 #{pct(latencies, 0.99)} µs over #{length(latencies)} reactions"
      )
    end

    for {id, switches} <- Enum.sort(state.switches) do
      {retunes, behaviour} =
        switches |> Enum.reverse() |> Enum.split_with(fn {_, n, _, _} -> n == "temperature" end)

      log =
        Enum.map_join(behaviour, ", ", fn {t, n, old, new} ->
          "#{n} #{old}→#{new} at #{:io_lib.format("~.1f", [t])}s"
        end)

      IO.puts("worker #{id} switch log: #{log}; #{length(retunes)} temperature retunes")
    end

    {store, reports} = state.reports
    IO.puts("store: #{format_values(store)}")

    for {id, seen} <- Enum.sort(reports),
        do: IO.puts("worker #{id} last saw: #{format_values(seen)}")

    IO.puts(
      "consistency: " <>
        if(ok?, do: "OK — every worker's last seen values equal the store's", else: "FAILED")
    )
  end

  defp pct(sorted, p),
    do: sorted |> Enum.at(min(length(sorted) - 1, floor(p * length(sorted)))) |> round()

  # -- small helpers ------------------------------------------------------------------

  defp fields(rest) do
    for pair <- String.split(rest, " ", trim: true), into: %{} do
      [k, v] = String.split(pair, "=", parts: 2)
      {k, v}
    end
  end

  # "model=3:large-lm strategy=..." -> %{"model" => {3, "large-lm"}, ...}
  defp parse_values(rest) do
    for {k, v} <- fields(rest), k in @watched, into: %{} do
      [version, value] = String.split(v, ":", parts: 2)
      {k, {String.to_integer(version), value}}
    end
  end

  defp format_values(values) when is_map(values),
    do: values |> Enum.sort() |> Enum.map_join(", ", fn {k, {v, x}} -> "#{k}=#{x} (v#{v})" end)

  defp format_values(other), do: inspect(other)

  defp elapsed_s,
    do: (System.monotonic_time(:millisecond) - :persistent_term.get({__MODULE__, :t0})) / 1000

  def say(text), do: IO.puts("[#{:io_lib.format("~5.2f", [elapsed_s()])}s] #{text}")
end

defmodule ReactiveDemo.Optimizer do
  @moduledoc false
  # Watches feedback (Python → Elixir) and retunes temperature (Elixir → Python)
  # by hill climbing: at most one decision per @every_ms, it keeps moving the
  # way the average score improved and turns back, with a smaller step, when
  # it got worse.
  use GenServer
  alias Snakepit.Bridge.{SessionStore, VariableUpdate}

  @every_ms 400

  def start_link(session), do: GenServer.start_link(__MODULE__, session)
  def stop(pid), do: GenServer.call(pid, :stop)

  @impl true
  def init(session) do
    {:ok, ref} = SessionStore.watch_variables(session, [:feedback])

    {:ok,
     %{
       session: session,
       ref: ref,
       scores: [],
       received: 0,
       decisions: 0,
       last: System.monotonic_time(:millisecond),
       previous: nil,
       direction: 1,
       step: 0.2
     }}
  end

  @impl true
  def handle_info(
        {:snakepit_variable_update, ref, %VariableUpdate{value: score}},
        %{ref: ref} = st
      ) do
    st = %{st | scores: [score | st.scores], received: st.received + 1}
    now = System.monotonic_time(:millisecond)
    if now - st.last >= @every_ms, do: {:noreply, decide(%{st | last: now})}, else: {:noreply, st}
  end

  @impl true
  def handle_call(:stop, _from, st) do
    SessionStore.unwatch_variables(st.ref)
    {:stop, :normal, %{decisions: st.decisions, received: st.received}, st}
  end

  defp decide(%{scores: []} = st), do: st

  defp decide(st) do
    avg = Enum.sum(st.scores) / length(st.scores)

    {direction, step} =
      if st.previous && avg < st.previous,
        do: {-st.direction, max(st.step * 0.7, 0.03)},
        else: {st.direction, st.step}

    old = SessionStore.get_variable_value(st.session, :temperature)
    new = Float.round(min(2.0, max(0.0, old + direction * step)), 2)
    # At a bound, turn around next time.
    direction = if new in [0.0, 2.0], do: -direction, else: direction

    :ok =
      SessionStore.update_variable(
        st.session,
        :temperature,
        new,
        ReactiveDemo.stamp(%{reason: "optimizer"})
      )

    trend =
      if st.previous,
        do: if(avg >= st.previous, do: "better", else: "worse"),
        else: "first reading"

    ReactiveDemo.say(
      "elixir   → temperature #{old} → #{new} (avg feedback #{Float.round(avg, 3)} over #{length(st.scores)} reports, #{trend})"
    )

    %{
      st
      | scores: [],
        decisions: st.decisions + 1,
        previous: avg,
        direction: direction,
        step: step
    }
  end
end

ReactiveDemo.main(System.argv())
