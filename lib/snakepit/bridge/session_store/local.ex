defmodule Snakepit.Bridge.SessionStore.Local do
  @moduledoc false
  # The store of this node, one NIF call per function (two when the first
  # answers :dirty). `Snakepit.Bridge.SessionStore` checks the arguments,
  # calls here first, and asks `Snakepit.Bridge.Cluster` to run the same
  # function on the node that owns the session when this one answers
  # {:error, {:session_not_found, id}}: so every function here says "not
  # here" that way, even those whose public twin answers false or a default.

  alias Snakepit.Bridge.{Cluster, Native}

  @type miss :: {:error, {:session_not_found, String.t()}}

  @spec create_session(String.t(), map(), pos_integer()) :: {:ok, map()} | {:error, term()}
  def create_session(session_id, metadata, ttl_ms) do
    case Native.create_session(session_id, metadata, ttl_ms) do
      {:ok, _} = created ->
        Cluster.announce(session_id)
        created

      error ->
        error
    end
  end

  @spec get_session(String.t()) :: {:ok, map()} | miss()
  def get_session(session_id), do: Native.get_session(session_id)

  @spec delete_session(String.t()) :: :ok | miss()
  def delete_session(session_id) do
    if Native.session_exists(session_id) do
      Native.delete_session(session_id)
      Cluster.withdraw(session_id)
      :ok
    else
      miss(session_id)
    end
  end

  @spec session_exists(String.t()) :: true | miss()
  def session_exists(session_id), do: Native.session_exists(session_id) || miss(session_id)

  @spec touch_session(String.t()) :: :ok | miss()
  def touch_session(session_id),
    do: if(Native.touch_session(session_id), do: :ok, else: miss(session_id))

  @spec register_variable(String.t(), term(), term(), term(), map(), map()) ::
          {:ok, String.t()} | {:error, term()}
  def register_variable(session_id, name, type, value, constraints, metadata) do
    retry_dirty(
      Native.register_variable(session_id, name, type, value, constraints, metadata),
      fn ->
        Native.register_variable_dirty(session_id, name, type, value, constraints, metadata)
      end
    )
  end

  @spec get_variable(String.t(), term()) :: {:ok, map()} | {:error, term()}
  def get_variable(session_id, identifier) do
    retry_dirty(Native.get_variable(session_id, identifier), fn ->
      Native.get_variable_dirty(session_id, identifier)
    end)
  end

  @spec get_variable_value(String.t(), term()) :: {:ok, term()} | {:error, term()}
  def get_variable_value(session_id, identifier) do
    retry_dirty(Native.get_variable_value(session_id, identifier), fn ->
      Native.get_variable_value_dirty(session_id, identifier)
    end)
  end

  @spec has_variable(String.t(), term()) :: {:ok, boolean()} | {:error, term()}
  def has_variable(session_id, identifier), do: Native.has_variable(session_id, identifier)

  @spec put_variable(String.t(), term(), term(), map(), non_neg_integer()) ::
          {:ok, pos_integer()} | {:error, term()}
  def put_variable(session_id, identifier, value, metadata, expected) do
    retry_dirty(Native.update_variable(session_id, identifier, value, metadata, expected), fn ->
      Native.update_variable_dirty(session_id, identifier, value, metadata, expected)
    end)
  end

  @spec get_variables(String.t(), list()) :: {:ok, {list(), list()}} | {:error, term()}
  def get_variables(session_id, identifiers) do
    retry_dirty(Native.get_variables(session_id, identifiers), fn ->
      Native.get_variables_dirty(session_id, identifiers)
    end)
  end

  @spec update_variables(String.t(), list(), map(), boolean()) :: term()
  def update_variables(session_id, pairs, metadata, atomic) do
    retry_dirty(Native.update_variables(session_id, pairs, metadata, atomic), fn ->
      Native.update_variables_dirty(session_id, pairs, metadata, atomic)
    end)
  end

  @spec list_variables(String.t(), String.t() | nil) :: {:ok, list()} | {:error, term()}
  def list_variables(session_id, pattern), do: Native.list_variables(session_id, pattern)

  @spec delete_variable(String.t(), term()) :: :ok | {:error, term()}
  def delete_variable(session_id, identifier), do: Native.delete_variable(session_id, identifier)

  @spec watch_variables(String.t(), list(), [String.t()], pid(), boolean(), map()) ::
          {:ok, reference()} | {:error, term()}
  def watch_variables(session_id, identifiers, patterns, pid, include_initial, since) do
    Native.watch_variables(session_id, identifiers, patterns, pid, include_initial, since)
  end

  defp miss(session_id), do: {:error, {:session_not_found, session_id}}

  # A NIF on a normal scheduler must return well under a millisecond. The NIF
  # alone decides what is too heavy for one (HEAVY, in
  # native/snakepit_nif/src/session_store.rs): it answers :dirty, having done
  # nothing, and the call is repeated on its dirty twin.
  defp retry_dirty(:dirty, twin), do: twin.()
  defp retry_dirty(result, _twin), do: result
end
