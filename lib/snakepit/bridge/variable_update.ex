defmodule Snakepit.Bridge.VariableUpdate do
  @moduledoc """
  One update delivered to a process watching variables with
  `Snakepit.Bridge.SessionStore.watch_variables/3`, inside the message

      {:snakepit_variable_update, ref, %Snakepit.Bridge.VariableUpdate{}}

  `update_type` is `:initial_value` (the value when the watch started),
  `:value_change`, `:registered` (a variable a `:patterns` glob of the watch
  matches was registered after the watch started; it carries the first value
  and comes before any change of that variable), `:deleted` (the last update
  for that variable) or `:session_closed` (the last update of the watch;
  variable fields are `nil`). A matching variable registered and deleted
  before the watcher was told of it never arrives.

  A watcher that keeps up gets every change; one that falls behind gets the
  latest value of each variable, and the gap in `version` shows what was
  coalesced. Per variable, versions only grow. Updates of one atomic batch
  share `batch` and arrive back to back.
  """

  alias Snakepit.Bridge.Variable

  @type update_type ::
          :initial_value | :value_change | :registered | :deleted | :session_closed

  @type t :: %__MODULE__{
          variable_id: String.t() | nil,
          name: String.t() | nil,
          value: Variable.value() | nil,
          version: pos_integer() | nil,
          type: Variable.var_type() | nil,
          source: :elixir | :python,
          metadata: %{optional(String.t()) => String.t()},
          update_type: update_type(),
          timestamp: DateTime.t(),
          variable: Variable.t() | nil,
          batch: pos_integer() | nil
        }

  @typedoc "The message a watching process receives."
  @type message :: {:snakepit_variable_update, reference(), t()}

  defstruct [
    :variable_id,
    :name,
    :value,
    :version,
    :type,
    :source,
    :update_type,
    :timestamp,
    :variable,
    :batch,
    metadata: %{}
  ]
end
