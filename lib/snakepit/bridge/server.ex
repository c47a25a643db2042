defmodule Snakepit.Bridge.Server do
  @moduledoc """
  The gRPC server of the bridge, as a child of your supervision tree.

      children = [
        {Snakepit.Bridge.Server, host: "127.0.0.1", port: 0}
      ]

      Snakepit.Bridge.Server.port()
      #=> 43127

  The server runs on a tokio runtime inside this BEAM OS process and serves
  the same store that `Snakepit.Bridge.SessionStore` reads and writes. This
  process owns the listener: when its supervisor stops it, the server stops
  accepting, in-flight calls finish (up to `:shutdown_grace` ms) and the port is
  released, so a restart can bind it again.

  ## Options

    * `:host` — address to bind (default `"127.0.0.1"`)
    * `:port` — port to bind; `0` picks a free one (default `50051`)
    * `:name` — registered name (default `Snakepit.Bridge.Server`)
    * `:session_ttl` — idle seconds before sessions created over gRPC expire (default 3600)
    * `:max_message_bytes` — largest gRPC message each way (default 4 MiB)
    * `:keepalive_interval` — seconds between HTTP/2 keepalive pings, `0` for none (default 30)
    * `:shutdown_grace` — ms that in-flight calls get when stopping (default 5000)
  """

  use GenServer

  alias Snakepit.Bridge.Native

  @doc false
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      # Leave room for the graceful stop inside terminate/2.
      shutdown: Keyword.get(opts, :shutdown_grace, 5000) + 1000
    }
  end

  @doc """
  Starts the server and links it to the caller. Fails with
  `{:error, {:invalid_argument, message}}` when the address cannot be bound.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "opts must be a keyword list, got: #{inspect(opts)}"
    end

    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc "The port the server named `server` is bound to (the real one when started with port 0)."
  @spec port(GenServer.server()) :: :inet.port_number()
  def port(server \\ __MODULE__), do: GenServer.call(server, :port)

  @impl true
  def init(opts) do
    # Trap exits so terminate/2 runs, and stops the listener, on shutdown.
    Process.flag(:trap_exit, true)
    host = Keyword.get(opts, :host, "127.0.0.1")
    port = Keyword.get(opts, :port, 50051)

    native_opts = %{
      session_ttl_ms: seconds_to_ms!(opts, :session_ttl, 3600),
      max_message_bytes: positive!(opts, :max_message_bytes, 4 * 1024 * 1024),
      keepalive_interval_ms: seconds_to_ms!(opts, :keepalive_interval, 30, allow_zero: true)
    }

    unless is_binary(host), do: raise(ArgumentError, "the :host option must be a string, got: #{inspect(host)}")

    unless is_integer(port) and port in 0..65535,
      do: raise(ArgumentError, "the :port option must be an integer in 0..65535, got: #{inspect(port)}")

    case Native.server_start(host, port, native_opts) do
      {:ok, server} ->
        {:ok, %{server: server, port: Native.server_port(server), grace: Keyword.get(opts, :shutdown_grace, 5000)}}

      {:error, reason} ->
        {:stop, reason}
    end
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  @impl true
  def terminate(_reason, state) do
    Native.server_stop(state.server, state.grace)
    :ok
  end

  defp seconds_to_ms!(opts, key, default, flags \\ []) do
    value = Keyword.get(opts, key, default)
    min_ok = if flags[:allow_zero], do: value >= 0, else: value > 0

    unless is_number(value) and min_ok do
      raise ArgumentError, "the #{inspect(key)} option must be a positive number of seconds, got: #{inspect(value)}"
    end

    round(value * 1000)
  end

  defp positive!(opts, key, default) do
    value = Keyword.get(opts, key, default)

    unless is_integer(value) and value > 0 do
      raise ArgumentError, "the #{inspect(key)} option must be a positive integer, got: #{inspect(value)}"
    end

    value
  end
end
