defmodule Snakepit.Bridge.SessionStore do
  @moduledoc """
  Sessions and their typed, versioned variables, in the Rust-owned store that
  Python processes reach over gRPC.

  Every function here is a direct NIF call into this node's store: no process
  sits in between, so reads and writes take microseconds and a session created
  here is at once visible to Python (and the other way round). On a cluster of
  connected nodes, a session another node owns is reached with one `:erpc`
  round trip instead, with the same results; see `Snakepit.Bridge.Cluster`.

  ## Sessions

      {:ok, _info} = SessionStore.create_session("run-1", ttl: 600)
      true = SessionStore.session_exists?("run-1")

  A session expires after `:ttl` seconds without access (default 3600); any
  call that names it, and a gRPC Heartbeat, counts as access. A watched
  session (a live Elixir watcher or gRPC watch stream) never expires; its TTL
  counts from when the last watcher left.

  ## Variables

      {:ok, _id} = SessionStore.register_variable("run-1", :temperature, :float, 0.7,
                     constraints: %{min: 0.0, max: 2.0})
      :ok = SessionStore.update_variable("run-1", :temperature, 0.9)
      0.9 = SessionStore.get_variable_value("run-1", :temperature)

  Types are `:float`, `:integer`, `:string`, `:boolean`, `:choice`, `:module`,
  `:embedding` and `:tensor` (atoms or strings). An identifier is a variable's
  id or its name (atom or string). A write that breaks the type or a constraint
  is refused and changes nothing.

  ## Watching

      {:ok, ref} = SessionStore.watch_variables("run-1", [:temperature], include_initial: true)
      receive do
        {:snakepit_variable_update, ^ref, %Snakepit.Bridge.VariableUpdate{value: v}} -> v
      end

  Changes from any source (Elixir, or Python over gRPC) are pushed to the
  watching process; see `Snakepit.Bridge.VariableUpdate` for the guarantees.
  With `patterns: ["temp_*"]` a watch also covers variables registered
  later whose names match; they arrive as `:registered`.

  ## Errors

  Expected failures are `{:error, reason}`:

    * `{:session_not_found, session_id}`
    * `:not_found` — no variable with that identifier
    * `{:already_exists, name}`
    * `{:invalid_value, message}`, `{:invalid_constraints, message}`,
      `{:invalid_type, message}`, `{:invalid_argument, message}`
    * `{:version_conflict, current_version}`
    * `{:resource_exhausted, message}` — a limit of the store would be passed
      (sessions, variables per session, value size, metadata, constraints,
      batch size, pattern length); the message names the limit and its value.
      The limits and their defaults are in `docs/limits.md`; a
      `Snakepit.Bridge.Server` sets them when it starts.
    * `{:unavailable, node}` — the session's owner node cannot be reached;
      functions that answer a boolean or a default answer `false` or the
      default instead

  A wrong term shape (a session id that is not a string, say) raises
  `ArgumentError` naming the argument.
  """

  alias Snakepit.Bridge.{Cluster, Native, Variable, VariableUpdate}
  alias Snakepit.Bridge.SessionStore.Local

  @default_ttl_seconds 3600

  @type session_id :: String.t()
  @type identifier_t :: String.t() | atom()
  @type reason ::
          :not_found
          | {:session_not_found, String.t()}
          | {:already_exists, String.t()}
          | {:invalid_value, String.t()}
          | {:invalid_constraints, String.t()}
          | {:invalid_type, String.t()}
          | {:invalid_argument, String.t()}
          | {:version_conflict, pos_integer()}
          | {:resource_exhausted, String.t()}
          | unavailable()

  @typedoc "The node that owns the session cannot be reached (see `Snakepit.Bridge.Cluster`)."
  @type unavailable :: {:unavailable, node()}

  @type session_info :: %{
          id: String.t(),
          metadata: %{optional(String.t()) => String.t()},
          created_at: DateTime.t(),
          last_accessed_at: DateTime.t(),
          ttl_ms: pos_integer(),
          variable_count: non_neg_integer(),
          watcher_count: non_neg_integer()
        }

  @type stats :: %{
          sessions: non_neg_integer(),
          grpc_watchers: non_neg_integer(),
          elixir_watchers: non_neg_integer(),
          watchers: non_neg_integer(),
          watchers_opened: non_neg_integer()
        }

  @type batch_results :: %{optional(identifier_t()) => {:ok, pos_integer()} | {:error, reason()}}

  # -- sessions ---------------------------------------------------------------

  @doc """
  Creates a session.

  Options: `:ttl` — idle seconds before it expires (default #{@default_ttl_seconds});
  `:metadata` — a map of strings.

  Returns `{:error, {:already_exists, id}}` if a live session has this id and
  `{:error, {:invalid_argument, message}}` for an empty or overlong id.
  """
  @spec create_session(session_id(), keyword()) :: {:ok, session_info()} | {:error, reason()}
  def create_session(session_id, opts \\ []) do
    check_session_id!(session_id)
    check_keyword!(opts, "opts")
    ttl = Keyword.get(opts, :ttl, @default_ttl_seconds)

    unless is_number(ttl) and ttl > 0 do
      raise ArgumentError,
            "the :ttl option must be a positive number of seconds, got: #{inspect(ttl)}"
    end

    Cluster.create_session(
      session_id,
      metadata!(Keyword.get(opts, :metadata, %{})),
      round(ttl * 1000)
    )
  end

  @doc """
  Describes a live session; counts as access. `{:error, :not_found}` if there is none.
  """
  @spec get_session(session_id()) ::
          {:ok, session_info()} | {:error, :not_found | unavailable()}
  def get_session(session_id) do
    check_session_id!(session_id)

    case Cluster.unless_here(Local.get_session(session_id), :get_session, [session_id]) do
      {:error, {:session_not_found, _}} -> {:error, :not_found}
      result -> result
    end
  end

  @doc """
  Deletes a session and its variables. Deleting a missing session is `:ok` too.
  """
  @spec delete_session(session_id()) :: :ok | {:error, unavailable()}
  def delete_session(session_id) do
    check_session_id!(session_id)

    case Cluster.unless_here(Local.delete_session(session_id), :delete_session, [session_id]) do
      {:error, {:unavailable, _}} = error -> error
      _ -> :ok
    end
  end

  @doc "Ids of all live sessions of every reachable node of the cluster, sorted."
  @spec list_sessions() :: [session_id()]
  def list_sessions, do: Cluster.list_sessions()

  @doc """
  Whether a live session has this id (false too when its node cannot be
  reached). Does not count as access.
  """
  @spec session_exists?(session_id()) :: boolean()
  def session_exists?(session_id) do
    check_session_id!(session_id)

    Cluster.unless_here(Local.session_exists(session_id), :session_exists, [session_id]) == true
  end

  @doc """
  Totals for this node's store: live sessions, live watchers (gRPC streams,
  Elixir subscriptions, and both together) and watchers opened since start.
  """
  @spec stats() :: stats()
  def stats do
    stats = Native.stats()
    Map.put(stats, :watchers, stats.grpc_watchers + stats.elixir_watchers)
  end

  @doc "Restarts the session's idle timer, like a gRPC Heartbeat."
  @spec touch_session(session_id()) :: :ok | {:error, :not_found | unavailable()}
  def touch_session(session_id) do
    check_session_id!(session_id)

    case Cluster.unless_here(Local.touch_session(session_id), :touch_session, [session_id]) do
      {:error, {:session_not_found, _}} -> {:error, :not_found}
      result -> result
    end
  end

  # -- variables --------------------------------------------------------------

  @doc """
  Registers a variable with its initial value; returns its id (`"var_<name>_<n>"`).

  Options: `:constraints` — a map for the type (`min`/`max`;
  `min_length`/`max_length`/`pattern`/`enum`; `choices`; `allowed_modules`;
  `dimensions`; `shape`); `:metadata` — a map of strings; `:description` —
  stored as metadata `"description"`.
  """
  @spec register_variable(
          session_id(),
          identifier_t(),
          Variable.var_type() | String.t(),
          term(),
          keyword()
        ) ::
          {:ok, String.t()} | {:error, reason()}
  def register_variable(session_id, name, type, initial_value, opts \\ []) do
    check_session_id!(session_id)
    check_identifier!(name, "name")

    unless is_atom(type) or is_binary(type) do
      raise ArgumentError, "type must be an atom or a string, got: #{inspect(type)}"
    end

    check_keyword!(opts, "opts")
    constraints = Keyword.get(opts, :constraints, %{})

    unless is_map(constraints) do
      raise ArgumentError, "the :constraints option must be a map, got: #{inspect(constraints)}"
    end

    metadata =
      case Keyword.fetch(opts, :description) do
        {:ok, text} ->
          Map.put(metadata!(Keyword.get(opts, :metadata, %{})), "description", to_string(text))

        :error ->
          metadata!(Keyword.get(opts, :metadata, %{}))
      end

    Cluster.unless_here(
      Local.register_variable(session_id, name, type, initial_value, constraints, metadata),
      :register_variable,
      [session_id, name, type, initial_value, constraints, metadata]
    )
  end

  @doc "The variable with this id or name."
  @spec get_variable(session_id(), identifier_t()) :: {:ok, Variable.t()} | {:error, reason()}
  def get_variable(session_id, identifier) do
    check_session_id!(session_id)
    check_identifier!(identifier, "identifier")

    case Cluster.unless_here(Local.get_variable(session_id, identifier), :get_variable, [
           session_id,
           identifier
         ]) do
      {:ok, fields} -> {:ok, Variable.from_native(fields)}
      error -> error
    end
  end

  @doc """
  The variable's current value, or `default` when the session or the variable
  does not exist.
  """
  @spec get_variable_value(session_id(), identifier_t(), term()) :: term()
  def get_variable_value(session_id, identifier, default \\ nil) do
    check_session_id!(session_id)
    check_identifier!(identifier, "identifier")

    case Cluster.unless_here(
           Local.get_variable_value(session_id, identifier),
           :get_variable_value,
           [session_id, identifier]
         ) do
      {:ok, value} -> value
      {:error, _} -> default
    end
  end

  @doc "Whether the session has a variable with this id or name (false if there is no session)."
  @spec has_variable?(session_id(), identifier_t()) :: boolean()
  def has_variable?(session_id, identifier) do
    check_session_id!(session_id)
    check_identifier!(identifier, "identifier")

    Cluster.unless_here(Local.has_variable(session_id, identifier), :has_variable, [
      session_id,
      identifier
    ]) == {:ok, true}
  end

  @doc """
  Sets a variable's value. `metadata` (a map of strings) is merged into the
  variable's metadata.

  Options: `:expected_version` — refuse with `{:error, {:version_conflict, current}}`
  unless the variable is at exactly this version (optimistic locking).
  """
  @spec update_variable(session_id(), identifier_t(), term(), map(), keyword()) ::
          :ok | {:error, reason()}
  def update_variable(session_id, identifier, value, metadata \\ %{}, opts \\ []) do
    case put_variable(session_id, identifier, value, metadata, opts) do
      {:ok, _version} -> :ok
      error -> error
    end
  end

  @doc """
  Like `update_variable/5` but returns the new version.
  """
  @spec put_variable(session_id(), identifier_t(), term(), map(), keyword()) ::
          {:ok, pos_integer()} | {:error, reason()}
  def put_variable(session_id, identifier, value, metadata \\ %{}, opts \\ []) do
    check_session_id!(session_id)
    check_identifier!(identifier, "identifier")
    check_keyword!(opts, "opts")
    expected = Keyword.get(opts, :expected_version, 0)

    unless is_integer(expected) and expected >= 0 do
      raise ArgumentError,
            "the :expected_version option must be a non-negative integer, got: #{inspect(expected)}"
    end

    metadata = metadata!(metadata)

    Cluster.unless_here(
      Local.put_variable(session_id, identifier, value, metadata, expected),
      :put_variable,
      [session_id, identifier, value, metadata, expected]
    )
  end

  @doc """
  Looks up several variables in one call: `found` is keyed by the identifier
  as given, `missing` lists the identifiers not found.
  """
  @spec get_variables(session_id(), [identifier_t()]) ::
          {:ok, %{found: %{optional(identifier_t()) => Variable.t()}, missing: [identifier_t()]}}
          | {:error, reason()}
  def get_variables(session_id, identifiers) do
    check_session_id!(session_id)

    unless is_list(identifiers) do
      raise ArgumentError, "identifiers must be a list, got: #{inspect(identifiers)}"
    end

    Enum.each(identifiers, &check_identifier!(&1, "each identifier"))

    case Cluster.unless_here(Local.get_variables(session_id, identifiers), :get_variables, [
           session_id,
           identifiers
         ]) do
      {:ok, {found, missing}} ->
        {:ok,
         %{
           found: Map.new(found, fn {k, fields} -> {k, Variable.from_native(fields)} end),
           missing: missing
         }}

      error ->
        error
    end
  end

  @doc """
  Sets several variables under one lock. `updates` is a map or a list of
  `{identifier, value}` pairs.

  Options: `:atomic` (default `false`) — all or nothing; `:metadata` — merged
  into each changed variable's metadata.

  Returns `{:ok, results}` with, per key, `{:ok, new_version}` or
  `{:error, reason}`. An atomic batch with any bad key applies nothing and
  returns `{:error, {:batch_failed, %{key => reason}}}` naming every bad key.
  """
  @spec update_variables(session_id(), map() | [{identifier_t(), term()}], keyword()) ::
          {:ok, batch_results()} | {:error, {:batch_failed, map()} | reason()}
  def update_variables(session_id, updates, opts \\ []) do
    check_session_id!(session_id)
    check_keyword!(opts, "opts")

    pairs =
      cond do
        is_map(updates) ->
          Map.to_list(updates)

        is_list(updates) ->
          updates

        true ->
          raise ArgumentError,
                "updates must be a map or a list of {identifier, value}, got: #{inspect(updates)}"
      end

    Enum.each(pairs, fn
      {key, _} ->
        check_identifier!(key, "each update key")

      other ->
        raise ArgumentError, "updates must be {identifier, value} pairs, got: #{inspect(other)}"
    end)

    atomic = Keyword.get(opts, :atomic, false)

    unless is_boolean(atomic) do
      raise ArgumentError, "the :atomic option must be a boolean, got: #{inspect(atomic)}"
    end

    metadata = metadata!(Keyword.get(opts, :metadata, %{}))

    case Cluster.unless_here(
           Local.update_variables(session_id, pairs, metadata, atomic),
           :update_variables,
           [session_id, pairs, metadata, atomic]
         ) do
      {:ok, applied} ->
        {:ok, Map.new(applied, fn {k, v} -> {k, {:ok, v}} end)}

      {:partial, applied, errors} ->
        {:ok,
         Map.merge(
           Map.new(applied, fn {k, v} -> {k, {:ok, v}} end),
           Map.new(errors, fn {k, r} -> {k, {:error, r}} end)
         )}

      error ->
        error
    end
  end

  @doc """
  The session's variables sorted by name; with `pattern`, only names matching
  the glob (`*` any run, `?` one character), e.g. `"temp_*"`.
  """
  @spec list_variables(session_id(), String.t() | nil) ::
          {:ok, [Variable.t()]} | {:error, reason()}
  def list_variables(session_id, pattern \\ nil) do
    check_session_id!(session_id)

    unless is_nil(pattern) or is_binary(pattern) do
      raise ArgumentError, "pattern must be a string or nil, got: #{inspect(pattern)}"
    end

    case Cluster.unless_here(Local.list_variables(session_id, pattern), :list_variables, [
           session_id,
           pattern
         ]) do
      {:ok, vars} -> {:ok, Enum.map(vars, &Variable.from_native/1)}
      error -> error
    end
  end

  @doc "Deletes a variable; its id is never reused."
  @spec delete_variable(session_id(), identifier_t()) :: :ok | {:error, reason()}
  def delete_variable(session_id, identifier) do
    check_session_id!(session_id)
    check_identifier!(identifier, "identifier")

    Cluster.unless_here(Local.delete_variable(session_id, identifier), :delete_variable, [
      session_id,
      identifier
    ])
  end

  # -- watching ------------------------------------------------------------------

  @doc """
  Subscribes a process to changes of variables, from any source.

  The process (the caller, or `opts[:pid]`) receives
  `t:Snakepit.Bridge.VariableUpdate.message/0` messages tagged with the
  returned `ref`. The subscription ends with `unwatch_variables/1`, when the
  process exits (it is monitored), or after the `:session_closed` update;
  deleting every watched variable does not end it.

  Options:
    * `:pid` — who receives the updates (default `self()`)
    * `:include_initial` — start with each variable's current value (default `false`)
    * `:since_versions` — `%{identifier => version}` the process already has;
      a variable's current value is sent first only if it is newer
    * `:patterns` — a list of glob patterns (as in `list_variables/2`: `*` any
      run, `?` one character, matched against the whole name), e.g.
      `["temp_*"]`. Every variable whose name matches is watched: those that
      exist now (their current value comes first with `:include_initial`)
      and those registered later, which arrive once as `:registered` with
      their first value, then their changes as usual. With `:since_versions`
      (a resume), a matching variable not listed there is sent with its
      current value as `:initial_value`, since it may have been registered
      while the process was away. A variable named and matched is delivered
      once.

      {:ok, ref} = SessionStore.watch_variables("run-1", [], patterns: ["temp_*"])

  A watch names identifiers, patterns or both: with neither,
  `{:error, {:invalid_argument, message}}`; an empty pattern is refused the
  same way (use `"*"` for all). Identifiers and patterns together count
  against the batch limit and the patterns' total bytes against the pattern
  limit (`{:error, {:resource_exhausted, message}}`). Every identifier must
  exist: `{:error, :not_found}` otherwise, and nothing is subscribed.
  """
  @spec watch_variables(session_id(), [identifier_t()], keyword()) ::
          {:ok, reference()} | {:error, reason()}
  def watch_variables(session_id, identifiers, opts \\ []) do
    check_session_id!(session_id)

    unless is_list(identifiers) do
      raise ArgumentError, "identifiers must be a list, got: #{inspect(identifiers)}"
    end

    Enum.each(identifiers, &check_identifier!(&1, "each identifier"))
    check_keyword!(opts, "opts")
    pid = Keyword.get(opts, :pid, self())

    unless is_pid(pid) and node(pid) == node(),
      do: raise(ArgumentError, "the :pid option must be a local pid, got: #{inspect(pid)}")

    include_initial = Keyword.get(opts, :include_initial, false)

    unless is_boolean(include_initial),
      do:
        raise(
          ArgumentError,
          "the :include_initial option must be a boolean, got: #{inspect(include_initial)}"
        )

    since =
      opts
      |> Keyword.get(:since_versions, %{})
      |> Map.new(fn
        {k, v} when (is_binary(k) or is_atom(k)) and is_integer(v) and v >= 0 ->
          {to_string(k), v}

        other ->
          raise ArgumentError,
                "the :since_versions option maps identifiers to versions, got entry: #{inspect(other)}"
      end)

    patterns = Keyword.get(opts, :patterns, [])

    unless is_list(patterns) and Enum.all?(patterns, &is_binary/1),
      do:
        raise(
          ArgumentError,
          "the :patterns option must be a list of strings, got: #{inspect(patterns)}"
        )

    case Local.watch_variables(session_id, identifiers, patterns, pid, include_initial, since) do
      {:error, {:session_not_found, _}} = miss ->
        Cluster.watch(session_id, identifiers, patterns, pid, include_initial, since, miss)

      result ->
        result
    end
  end

  @doc """
  Ends a subscription at once (it stops counting in `watcher_count`).
  Idempotent. Updates already delivered stay in the mailbox; when the caller
  is the watching process, they are flushed.
  """
  @spec unwatch_variables(reference()) :: :ok
  def unwatch_variables(ref) do
    unless is_reference(ref),
      do:
        raise(
          ArgumentError,
          "ref must be the reference watch_variables/3 returned, got: #{inspect(ref)}"
        )

    with :not_remote <- Cluster.unwatch(ref), do: unwatch_local(ref)
    flush(ref)
  end

  defp flush(ref) do
    receive do
      {:snakepit_variable_update, ^ref, %VariableUpdate{}} -> flush(ref)
    after
      0 -> :ok
    end
  end

  defp unwatch_local(ref) do
    Native.unwatch_variables(ref)
  rescue
    # A plain reference: a watch of another node's session that has ended.
    ArgumentError -> :ok
  end

  # -- argument checks ----------------------------------------------------------

  defp check_session_id!(id) when is_binary(id), do: :ok

  defp check_session_id!(id),
    do: raise(ArgumentError, "session_id must be a string, got: #{inspect(id)}")

  defp check_identifier!(id, _what)
       when is_binary(id) or (is_atom(id) and not is_nil(id) and not is_boolean(id)),
       do: :ok

  defp check_identifier!(id, what),
    do: raise(ArgumentError, "#{what} must be a string or an atom, got: #{inspect(id)}")

  defp check_keyword!(opts, what) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "#{what} must be a keyword list, got: #{inspect(opts)}"
    end
  end

  defp metadata!(nil), do: %{}
  defp metadata!(m) when is_map(m), do: m

  defp metadata!(other),
    do: raise(ArgumentError, "metadata must be a map, got: #{inspect(other)}")
end
