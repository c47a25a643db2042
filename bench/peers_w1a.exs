# The Elixir writer of bench/peers.py's W1a row: a BEAM that embeds the
# bridge's gRPC server and writes with SessionStore.update_variable/3 (the
# NIF), so the row is measured in the same run as the peers it is compared to.
#
#     mix run bench/peers_w1a.exs      # started by bench/peers.py; talks on stdin/stdout
#
# Protocol: one line each way. Replies start with "W1A " because `mix run`
# may print compiler lines on the same stdout first.
#
#     (start)                          -> W1A READY address=127.0.0.1:PORT otp=… elixir=…
#     session SID                      -> W1A SESSION SID   (the session, integer variable `stamp` = 0)
#     write SID WARMUP UPDATES MS      -> W1A STAMPS N s1 s2 …   (the timed updates' stamps)
#     delete SID                       -> W1A DELETED SID
#     quit (or end of input)           -> W1A BYE, then the VM stops
#     a command that fails             -> W1A ERROR message
#
# `write` makes WARMUP + UPDATES writes on an absolute schedule MS apart, each
# value being :os.system_time(:nanosecond) (CLOCK_REALTIME, Python's
# time.time_ns()) read just before the write, then the end marker -1 one tick
# after the last: what peers.py's Python writers do for the other W1 rows.

Code.require_file("support.exs", __DIR__)

defmodule Snakepit.Bench.PeersW1a do
  @moduledoc false

  alias Snakepit.Bench.Support
  alias Snakepit.Bridge.{Server, SessionStore}

  @server :snakepit_bench_peers_w1a_server
  @end_marker -1

  def main do
    # auth: false and loopback, like the standalone server peers.py starts
    # for W1b: the figures are the transport's, not a token check's.
    {:ok, pid} =
      Server.start_link(host: "127.0.0.1", port: 0, name: @server, auth: false, log_level: :error)

    reply(
      "READY address=127.0.0.1:#{Server.port(@server)} otp=#{System.otp_release()} " <>
        "elixir=#{System.version()} schedulers=#{System.schedulers_online()}"
    )

    loop()
    GenServer.stop(pid)
    reply("BYE")
  end

  # End of input also ends the loop: if peers.py dies, this VM does not outlive it.
  defp loop do
    case IO.gets("") do
      line when is_binary(line) ->
        case String.split(line) do
          ["quit"] ->
            :ok

          command ->
            try do
              handle(command)
            rescue
              e -> reply("ERROR " <> String.replace(Exception.message(e), "\n", " | "))
            end

            loop()
        end

      _eof_or_error ->
        :ok
    end
  end

  defp handle(["session", sid]) do
    {:ok, _} = SessionStore.create_session(sid)
    {:ok, _} = SessionStore.register_variable(sid, :stamp, :integer, 0)
    reply("SESSION #{sid}")
  end

  defp handle(["write", sid, warmup, updates, interval_ms]) do
    [warmup, updates, interval_ms] =
      Enum.map([warmup, updates, interval_ms], &String.to_integer/1)

    # 5 ms ahead, like peers.py's scheduled_writes: the first write is on schedule too.
    start = System.monotonic_time(:millisecond) + 5
    stamps = write_all(sid, 0, warmup + updates, interval_ms, start, [])
    timed = Enum.drop(stamps, warmup)
    reply("STAMPS #{length(timed)} " <> Enum.join(timed, " "))
  end

  defp handle(["delete", sid]) do
    SessionStore.delete_session(sid)
    reply("DELETED #{sid}")
  end

  defp handle(command), do: raise("unknown command: #{Enum.join(command, " ")}")

  defp write_all(sid, n, n, interval_ms, start, stamps) do
    Support.wait_until(start + n * interval_ms)
    :ok = SessionStore.update_variable(sid, :stamp, @end_marker)
    Enum.reverse(stamps)
  end

  defp write_all(sid, i, n, interval_ms, start, stamps) do
    Support.wait_until(start + i * interval_ms)
    stamp = :os.system_time(:nanosecond)
    :ok = SessionStore.update_variable(sid, :stamp, stamp)
    write_all(sid, i + 1, n, interval_ms, start, [stamp | stamps])
  end

  defp reply(line), do: IO.puts("W1A " <> line)
end

Snakepit.Bench.PeersW1a.main()
