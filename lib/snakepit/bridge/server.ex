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
  accepting (the listener closes at once), in-flight calls finish (up to
  `:shutdown_grace` ms) and the port is released, so a restart can bind it again.
  If the process is killed instead, the listener is closed when the process's
  memory is reclaimed, a moment later.

  ## Options

  Address and protocol:

    * `:host` — address to bind (default `"127.0.0.1"`)
    * `:port` — port to bind; `0` picks a free one (default `50051`)
    * `:name` — registered name (default `Snakepit.Bridge.Server`)
    * `:session_ttl` — idle seconds before sessions created over gRPC expire (default 3600)
    * `:max_message_bytes` — largest gRPC message each way, at least 65536 (default 4 MiB)
    * `:keepalive_interval` — seconds between HTTP/2 keepalive pings, `0` for none (default 30)
    * `:shutdown_grace` — ms that in-flight calls get when stopping (default 5000)
    * `:log_level` — the most verbose events of the server sent to Logger:
      `:debug`, `:info`, `:warning` or `:error` (default: the `:log_level` of
      the `:snakepit` application environment, else `:info`); see "Logs"

  Security (see "Security" below):

    * `:token` — the server token, at least 32 visible ASCII characters
      (default: the `:token` of the `:snakepit` application environment,
      else a random one, 64 hex characters). Give every node of a cluster
      the same one, so tokens minted on one node are valid on all.
    * `:auth` — `false` serves without any token (default `true`)
    * `:allow_insecure` — serve a non-loopback address without TLS and a
      token anyway (default `false`)
    * `:tls` — `[cert_file: path, key_file: path, client_ca_file: path]`:
      PEM files; with `:client_ca_file`, clients must present a certificate
      signed by a CA in it (mutual TLS)

  Connections (each costs a file descriptor of this BEAM, so hostile or
  forgetful clients must not be able to take them all):

    * `:max_connections` — connections open at once; one more is closed as
      soon as it is accepted (default 256)
    * `:handshake_timeout` — seconds a new connection has to start HTTP/2
      before it is closed (default 10)
    * `:idle_timeout` — seconds a connection with no call started and no
      watch open stays open; `0` keeps it forever (default 300). Clients
      reconnect on their next call.
    * `:max_watchers_per_connection` — WatchVariables streams open at once on
      one connection (default 1024)
    * `:max_watchers` — WatchVariables streams open at once on this server (default 16384)

  Store limits. These apply to the **whole store of this BEAM**, Elixir calls
  through `Snakepit.Bridge.SessionStore` included, from the moment the server
  starts, and they stay in force after it stops (until another server starts
  with other limits). Going over one returns
  `{:error, {:resource_exhausted, message}}`, where the message names the
  limit and its value, and changes nothing:

    * `:max_sessions` — live sessions (default 10000)
    * `:max_variables_per_session` — variables in one session (default 10000)
    * `:max_value_bytes` — a value's size as JSON (default: as much as a
      message of `:max_message_bytes` leaves after the metadata and constraint
      limits and a 16 KiB envelope; 3,981,312 bytes with every default)
    * `:max_metadata_entries` — entries in the metadata of one session,
      variable or change (default 256)
    * `:max_metadata_bytes` — bytes of keys and values in that metadata (default 65536)
    * `:max_constraint_bytes` — a variable's constraints as JSON (default 65536)
    * `:max_batch` — identifiers in one batch read or write (default 10000)
    * `:max_pattern_bytes` — length of a `list_variables` glob pattern (default 1024)

  Every count and size must be a positive integer and every duration a
  positive number of seconds (`:keepalive_interval` and `:idle_timeout` may
  be 0): anything else raises `ArgumentError` naming the option. Settings
  that are well-typed but do not fit together (a `:max_message_bytes` below
  65536, a `:max_value_bytes` whose variable could not be read back in one
  message) fail to start with `{:error, {:invalid_argument, message}}`, the
  message naming the setting, before any port is bound.

  ## Restarts keep the port

  A server started with `port: 0` remembers the port it got, per `:name` and
  `:host`, for the life of this BEAM. When its supervisor restarts it (after a
  crash, a `:kill` or a `Supervisor.terminate_child/2` and
  `Supervisor.restart_child/2`), it binds that same port again, so Python
  clients that reconnect to the address they had (watchers do) find it. While
  the old instance is still releasing the port, the bind is retried for up to
  2 seconds; if the port is still taken then, the start fails with
  `{:error, {:invalid_argument, message}}` saying so. The same retry applies
  to a restart with an explicit port. To get a fresh port, use another
  `:name`.

  ## Security

  By default the server has a token: every call but gRPC health checking
  (`grpc.health.v1.Health`, for probes) must carry the metadata
  `authorization: Bearer <token>`, or it is refused with UNAUTHENTICATED (and
  logged at warning with the peer's address, never the token). Unless `:token`
  gives one, the token is random (256 bits, 64 hex characters), made when the
  server first starts under its `:name` and kept for the life of this BEAM,
  like the port, so a restarted server accepts the tokens its workers hold.

    * `token/1` is the server token: it grants everything.
    * `session_token/2` mints a token that grants one session's calls only
      (PERMISSION_DENIED for any other); give workers that, or rather
      `worker_env/2`, which Python's `snakepit_bridge.connect()` reads.

  `auth: false` turns tokens off: any process that can connect can use every
  session. `:tls` makes the server speak TLS only; add `:client_ca_file` to
  require client certificates. A bind to an address other than loopback
  (`"0.0.0.0"`, a LAN address) is refused unless both TLS and a token protect
  it: the start fails with `{:error, {:invalid_argument, message}}` saying
  what is missing. `allow_insecure: true` accepts that risk (say, behind a
  proxy that terminates TLS).

  A token too short or a TLS file that cannot be read or parsed fails the
  start with `{:error, {:invalid_argument, message}}` too.

  ## Logs

  What the server's Rust side reports (refused calls, limits hit, panics at
  `:error`; connections and watch streams opening and closing at `:debug`)
  arrives in Logger with `domain: [:snakepit]` (in the `:logger` event the
  domain is `[:elixir, :snakepit]`: Elixir puts `:elixir` first) and the
  event's fields as metadata (such as `:peer`, `:method`, `:reason`, and
  `:target`, the Rust module). Nothing is printed to stderr. At most about
  20 events a second reach Logger (bursts of up to 100); the first one after
  some were dropped says how many.

  Events of every server go through one Elixir process: the server started
  most recently that is still running, with its `:log_level`. When it stops,
  the one started before it takes over; with no server running, events (say,
  of connections still closing) are dropped.
  """

  use GenServer

  require Logger

  alias Snakepit.Bridge.Native

  # How long a restart waits for its old port to be released, and how often it tries.
  @rebind_window_ms 2000
  @rebind_every_ms 25

  @max_u64 0xFFFF_FFFF_FFFF_FFFF

  # Counts and sizes passed to the NIF as they are; `nil` there means the
  # Rust default (the one documented above).
  @count_options [
    :max_connections,
    :max_watchers_per_connection,
    :max_watchers,
    :max_sessions,
    :max_variables_per_session,
    :max_value_bytes,
    :max_metadata_entries,
    :max_metadata_bytes,
    :max_constraint_bytes,
    :max_batch,
    :max_pattern_bytes
  ]

  @doc """
  The child spec: the id is the `:name`, and shutdown leaves room for
  `:shutdown_grace`.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      # Leave room for the graceful stop inside terminate/2.
      shutdown: Keyword.get(opts, :shutdown_grace, 5000) + 1000
    }
  end

  @doc """
  Starts the server and links it to the caller.

  Raises `ArgumentError` naming the option when an option has the wrong type
  or range. Fails with `{:error, {:invalid_argument, message}}` when the
  options do not fit together or the address cannot be bound.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "opts must be a keyword list, got: #{inspect(opts)}"
    end

    # Checked here, in the caller, so a bad option raises where it was written.
    config = config!(opts)
    GenServer.start_link(__MODULE__, config, name: config.name)
  end

  @doc "The port the server named `server` is bound to (the real one when started with port 0)."
  @spec port(GenServer.server()) :: :inet.port_number()
  def port(server \\ __MODULE__), do: GenServer.call(server, :port)

  @doc """
  The server token of `server`: it grants every call, so hand it only to
  trusted clients (workers should get `session_token/2` instead). `nil` when
  the server runs with `auth: false`.
  """
  @spec token(GenServer.server()) :: String.t() | nil
  def token(server \\ __MODULE__), do: GenServer.call(server, :token)

  @doc """
  Mints a token that grants the calls about `session_id` only (the session
  need not exist yet); calls about any other session are refused with
  PERMISSION_DENIED, and so are calls about no session (Ping, reflection).

  Nothing is stored per token: it is derived from the server token, so it
  stays valid as long as the server token does (restarts under the same
  `:name` included, see "Security").

  Raises `ArgumentError` when `session_id` is not a string, or when the server
  runs with `auth: false` (it has no tokens; `worker_env/2` then leaves the
  token out).
  """
  @spec session_token(String.t(), GenServer.server()) :: String.t()
  def session_token(session_id, server \\ __MODULE__) do
    check_session_id!(session_id)

    case GenServer.call(server, {:session_token, session_id}) do
      {:ok, token} -> token
      {:error, {:failed_precondition, message}} -> raise ArgumentError, message
    end
  end

  @doc """
  The environment a Python worker for `session_id` needs, for
  `snakepit_bridge.connect()` and `connect_async()`:

    * `"SNAKEPIT_BRIDGE_ADDRESS"` — `"host:port"` of this server (a wildcard
      bind such as `"0.0.0.0"` is given as `"127.0.0.1"`, `"::"` as `"[::1]"`)
    * `"SNAKEPIT_BRIDGE_TOKEN"` — `session_token(session_id)`; absent when the
      server runs with `auth: false`
    * `"SNAKEPIT_BRIDGE_SESSION"` — `session_id`

  With `:tls`, also set `"SNAKEPIT_BRIDGE_ROOT_CERTIFICATES"` to a PEM file of
  the CA that signed the server's certificate (this server does not know it).

      System.cmd("python", ["worker.py"], env: Map.to_list(Server.worker_env("run-1")))
  """
  @spec worker_env(String.t(), GenServer.server()) :: %{String.t() => String.t()}
  def worker_env(session_id, server \\ __MODULE__) do
    check_session_id!(session_id)
    GenServer.call(server, {:worker_env, session_id})
  end

  defp check_session_id!(session_id) do
    unless is_binary(session_id) and String.valid?(session_id) and session_id != "",
      do:
        raise(
          ArgumentError,
          "session_id must be a non-empty string, got: #{inspect(session_id)}"
        )
  end

  @impl true
  def init(config) do
    # Trap exits so terminate/2 runs, and stops the listener, on shutdown.
    Process.flag(:trap_exit, true)
    key = {__MODULE__, config.name, config.host}
    config = with_remembered_token(config)

    result =
      case {config.port, :persistent_term.get(key, nil)} do
        {0, {0, had}} -> rebind(config, had)
        {port, {port, port}} -> rebind(config, port)
        {port, _} -> start_native(config, port)
      end

    case result do
      {:ok, server} ->
        port = Native.server_port(server)
        remember(key, {config.port, port})

        if config.native.auth and is_nil(config.native.token),
          do: remember(token_key(config), Native.server_token(server))

        {:ok, %{server: server, port: port, host: config.host, grace: config.grace}}

      {:error, {:addr_in_use, message}} ->
        {:stop, {:invalid_argument, message}}

      {:error, reason} ->
        {:stop, reason}
    end
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}
  def handle_call(:token, _from, state), do: {:reply, Native.server_token(state.server), state}

  def handle_call({:session_token, session_id}, _from, state),
    do: {:reply, Native.server_session_token(state.server, session_id), state}

  def handle_call({:worker_env, session_id}, _from, state) do
    env = %{
      "SNAKEPIT_BRIDGE_ADDRESS" => "#{connect_host(state.host)}:#{state.port}",
      "SNAKEPIT_BRIDGE_SESSION" => session_id
    }

    env =
      case Native.server_session_token(state.server, session_id) do
        {:ok, token} -> Map.put(env, "SNAKEPIT_BRIDGE_TOKEN", token)
        {:error, {:failed_precondition, _}} -> env
      end

    {:reply, env, state}
  end

  @impl true
  def handle_info({:snakepit_bridge_log, level, message, fields}, state) do
    log(level, message, fields)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    Native.server_stop(state.server, state.grace)
    :ok
  end

  defp start_native(config, port), do: Native.server_start(config.host, port, config.native)

  # A generated token is remembered per :name, like the port, so a restart
  # keeps it and the workers that hold it (or session tokens minted from it).
  defp token_key(config), do: {__MODULE__, :token, config.name}

  defp with_remembered_token(%{native: %{auth: true, token: nil} = native} = config) do
    %{config | native: %{native | token: :persistent_term.get(token_key(config), nil)}}
  end

  defp with_remembered_token(config), do: config

  # Where a worker on this host connects to: a wildcard bind is reached on loopback.
  defp connect_host("0.0.0.0"), do: "127.0.0.1"
  defp connect_host(host) when host in ["::", "[::]"], do: "[::1]"

  defp connect_host(host) do
    if String.contains?(host, ":") and not String.starts_with?(host, "["),
      do: "[#{host}]",
      else: host
  end

  # Logger metadata keys that Logger or :logger set themselves.
  @reserved_metadata [:domain, :pid, :mfa, :file, :line, :time, :gl, :application] ++
                       [:module, :function, :initial_call, :registered_name, :crash_reason]

  defp log(level, message, fields) do
    {dropped, fields} = Map.pop(fields, :dropped)

    message =
      if dropped,
        do:
          "#{message} (#{dropped} earlier log events of the bridge were dropped by its rate limit)",
        else: message

    metadata =
      Enum.map(fields, fn {key, value} ->
        if key in @reserved_metadata, do: {:"snakepit_#{key}", value}, else: {key, value}
      end)

    Logger.log(level, message, [domain: [:snakepit]] ++ metadata)
  end

  # A restart binds the port it had. After a :kill the old instance's listener
  # closes only once its resource is collected, so "in use" is retried briefly.
  defp rebind(config, port) do
    deadline = System.monotonic_time(:millisecond) + @rebind_window_ms
    rebind(config, port, deadline)
  end

  defp rebind(config, port, deadline) do
    case start_native(config, port) do
      {:error, {:addr_in_use, message}} ->
        if System.monotonic_time(:millisecond) < deadline do
          Process.sleep(@rebind_every_ms)
          rebind(config, port, deadline)
        else
          {:error,
           {:invalid_argument,
            "the port this server had before its restart is taken (still in use after " <>
              "#{@rebind_window_ms} ms): #{message}; give it another :name to get a fresh port"}}
        end

      other ->
        other
    end
  end

  # persistent_term updates are costly (a global scan), so write only on change.
  defp remember(key, value) do
    unless :persistent_term.get(key, nil) == value, do: :persistent_term.put(key, value)
  end

  @other_options [
    :host,
    :port,
    :name,
    :session_ttl,
    :max_message_bytes,
    :keepalive_interval,
    :shutdown_grace,
    :handshake_timeout,
    :idle_timeout,
    :token,
    :auth,
    :allow_insecure,
    :tls,
    :log_level
  ]

  @tls_options [:cert_file, :key_file, :client_ca_file]
  @log_levels [:debug, :info, :warning, :error]

  defp config!(opts) do
    # A misspelt limit would otherwise leave its default in force, unnoticed.
    case Keyword.keys(opts) -- (@other_options ++ @count_options) do
      [] ->
        :ok

      unknown ->
        raise ArgumentError,
              "unknown option(s) #{inspect(unknown)}; see Snakepit.Bridge.Server's docs"
    end

    host = Keyword.get(opts, :host, "127.0.0.1")
    port = Keyword.get(opts, :port, 50051)
    grace = Keyword.get(opts, :shutdown_grace, 5000)

    unless is_binary(host),
      do: raise(ArgumentError, "the :host option must be a string, got: #{inspect(host)}")

    unless is_integer(port) and port in 0..65535,
      do:
        raise(
          ArgumentError,
          "the :port option must be an integer in 0..65535, got: #{inspect(port)}"
        )

    unless is_integer(grace) and grace >= 0,
      do:
        raise(
          ArgumentError,
          "the :shutdown_grace option must be a non-negative integer of ms, got: #{inspect(grace)}"
        )

    idle_timeout_ms =
      if Keyword.has_key?(opts, :idle_timeout),
        do: seconds_to_ms!(opts, :idle_timeout, nil, allow_zero: true)

    handshake_timeout_ms =
      if Keyword.has_key?(opts, :handshake_timeout),
        do: seconds_to_ms!(opts, :handshake_timeout, nil)

    auth = boolean!(opts, :auth, true)
    # A cluster shares one token through the application environment, so a
    # token minted on any node is valid on every node.
    token =
      Keyword.get_lazy(opts, :token, fn -> if auth, do: Application.get_env(:snakepit, :token) end)

    unless is_nil(token) or (is_binary(token) and String.valid?(token)),
      do: raise(ArgumentError, "the :token option must be a string, got: #{inspect(token)}")

    if token && not auth,
      do: raise(ArgumentError, "the :token option was given with auth: false; drop one of them")

    native =
      Map.merge(
        %{
          session_ttl_ms: seconds_to_ms!(opts, :session_ttl, 3600),
          max_message_bytes: positive!(opts, :max_message_bytes, 4 * 1024 * 1024),
          keepalive_interval_ms: seconds_to_ms!(opts, :keepalive_interval, 30, allow_zero: true),
          handshake_timeout_ms: handshake_timeout_ms,
          idle_timeout_ms: idle_timeout_ms,
          token: token,
          auth: auth,
          allow_insecure: boolean!(opts, :allow_insecure, false),
          tls: tls!(Keyword.get(opts, :tls)),
          log_level: log_level!(opts)
        },
        Map.new(@count_options, fn key -> {key, positive!(opts, key, nil)} end)
      )

    %{
      name: Keyword.get(opts, :name, __MODULE__),
      host: host,
      port: port,
      grace: grace,
      native: native
    }
  end

  defp boolean!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_boolean(value) ->
        value

      value ->
        raise ArgumentError,
              "the #{inspect(key)} option must be a boolean, got: #{inspect(value)}"
    end
  end

  defp tls!(nil), do: nil

  defp tls!(tls) do
    unless Keyword.keyword?(tls) and tls != [] do
      raise ArgumentError,
            "the :tls option must be a keyword list with :cert_file and :key_file, got: #{inspect(tls)}"
    end

    case Keyword.keys(tls) -- @tls_options do
      [] ->
        :ok

      unknown ->
        raise ArgumentError,
              "unknown :tls option(s) #{inspect(unknown)}; expected #{inspect(@tls_options)}"
    end

    path = fn key, required? ->
      case Keyword.get(tls, key) do
        nil when not required? ->
          nil

        value when is_binary(value) and value != "" ->
          value

        value ->
          raise ArgumentError,
                "the :tls option #{inspect(key)} must be a file path (a string), got: #{inspect(value)}"
      end
    end

    %{
      cert_file: path.(:cert_file, true),
      key_file: path.(:key_file, true),
      client_ca_file: path.(:client_ca_file, false)
    }
  end

  defp log_level!(opts) do
    case Keyword.get_lazy(opts, :log_level, fn ->
           Application.get_env(:snakepit, :log_level, :info)
         end) do
      level when level in @log_levels ->
        level

      level ->
        raise ArgumentError,
              "the :log_level option must be one of #{inspect(@log_levels)}, got: #{inspect(level)}"
    end
  end

  defp seconds_to_ms!(opts, key, default, flags \\ []) do
    value = Keyword.get(opts, key, default)
    min_ok = is_number(value) and if(flags[:allow_zero], do: value >= 0, else: value > 0)

    # Caps at u64 ms so the NIF never sees a number it cannot decode.
    unless min_ok and value * 1000 <= @max_u64 do
      what = if flags[:allow_zero], do: "a non-negative", else: "a positive"

      raise ArgumentError,
            "the #{inspect(key)} option must be #{what} number of seconds, got: #{inspect(value)}"
    end

    round(value * 1000)
  end

  # A `nil` default means "not given": the NIF applies its own default.
  defp positive!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      nil when is_nil(default) ->
        nil

      value when is_integer(value) and value > 0 and value <= @max_u64 ->
        value

      value ->
        raise ArgumentError,
              "the #{inspect(key)} option must be a positive integer, got: #{inspect(value)}"
    end
  end
end
