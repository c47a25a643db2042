defmodule Snakepit.Bridge.Native do
  @moduledoc false
  # One stub per NIF of native/snakepit_nif. Public modules call these; users never do.

  @on_load :load_nif

  def load_nif do
    path = :snakepit |> :code.priv_dir() |> Path.join("native/libsnakepit_nif")
    :erlang.load_nif(String.to_charlist(path), 0)
  end

  defp err, do: :erlang.nif_error(:nif_not_loaded)

  # Snakepit.Bridge.Server
  def server_start(_host, _port, _opts), do: err()
  def server_port(_server), do: err()
  def server_stop(_server, _grace_ms), do: err()
  def server_token(_server), do: err()
  def server_session_token(_server, _session_id), do: err()

  # Snakepit.Bridge.SessionStore: sessions
  def create_session(_id, _metadata, _ttl_ms), do: err()
  def get_session(_id), do: err()
  def delete_session(_id), do: err()
  def list_sessions, do: err()
  def session_exists(_id), do: err()
  def touch_session(_id), do: err()
  def stats, do: err()

  # Snakepit.Bridge.SessionStore: variables. The _dirty twins run on a dirty
  # CPU scheduler; the normal NIF answers :dirty when its input or result is
  # too heavy for a normal one, and the caller repeats the call on the twin.
  def register_variable(_session_id, _name, _type, _value, _constraints, _metadata), do: err()

  def register_variable_dirty(_session_id, _name, _type, _value, _constraints, _metadata),
    do: err()

  def get_variable(_session_id, _identifier), do: err()
  def get_variable_dirty(_session_id, _identifier), do: err()
  def get_variable_value(_session_id, _identifier), do: err()
  def get_variable_value_dirty(_session_id, _identifier), do: err()
  def has_variable(_session_id, _identifier), do: err()
  def update_variable(_session_id, _identifier, _value, _metadata, _expected_version), do: err()

  def update_variable_dirty(_session_id, _identifier, _value, _metadata, _expected_version),
    do: err()

  def get_variables(_session_id, _identifiers), do: err()
  def get_variables_dirty(_session_id, _identifiers), do: err()
  def update_variables(_session_id, _updates, _metadata, _atomic), do: err()
  def update_variables_dirty(_session_id, _updates, _metadata, _atomic), do: err()
  def list_variables(_session_id, _pattern), do: err()
  def delete_variable(_session_id, _identifier), do: err()

  # Snakepit.Bridge.SessionStore: watching
  def watch_variables(_session_id, _identifiers, _patterns, _pid, _include_initial, _since),
    do: err()

  def unwatch_variables(_ref), do: err()

  # Snakepit.Bridge.Cluster
  def cluster_register(_pid), do: err()
  def cluster_unregister, do: err()
  def cluster_reply(_reply, _answer), do: err()
  def cluster_serve(_method, _request, _binary_encoding), do: err()
  def cluster_stream_open(_stream, _sink_pid), do: err()
  def cluster_stream_push(_stream, _updates), do: err()
  def cluster_stream_close(_stream, _reason), do: err()
  def cluster_wire_watch(_session_id, _request, _binary_encoding, _relay_pid), do: err()
  def cluster_wire_ack(_wire_ref, _n), do: err()
  def cluster_wire_cancel(_wire_ref), do: err()
end
