defmodule Snakepit.Bridge.Variable do
  @moduledoc """
  A snapshot of one typed, versioned variable, as `Snakepit.Bridge.SessionStore`
  returns it.

  The store owns the variable; this struct is a copy taken at one version.
  `version` starts at 1 and grows by one on every change; `source` says who
  made the last change (`:elixir` or `:python`).

  Special floats are the atoms `:nan`, `:infinity` and `:negative_infinity`;
  tensors are maps `%{shape: [..], data: [..]}` with `data` flat, row-major.
  """

  @typedoc "The eight variable types."
  @type var_type ::
          :float | :integer | :string | :boolean | :choice | :module | :embedding | :tensor

  @typedoc "A float, including the special values."
  @type float_value :: float() | :nan | :infinity | :negative_infinity

  @typedoc "A variable's value, by type."
  @type value ::
          float_value()
          | integer()
          | String.t()
          | boolean()
          | [float_value()]
          | %{shape: [non_neg_integer()], data: [float_value()]}

  @type t :: %__MODULE__{
          id: String.t(),
          name: String.t(),
          type: var_type(),
          value: value(),
          constraints: map(),
          metadata: %{optional(String.t()) => String.t()},
          version: pos_integer(),
          source: :elixir | :python,
          created_at: DateTime.t(),
          last_updated_at: DateTime.t()
        }

  @enforce_keys [:id, :name, :type, :value, :version]
  defstruct [
    :id,
    :name,
    :type,
    :value,
    :version,
    :source,
    :created_at,
    :last_updated_at,
    constraints: %{},
    metadata: %{}
  ]

  @doc false
  # Builds the struct from the tuple the NIF's read path returns; struct and
  # map literals here are much cheaper than building maps inside the NIF.
  def from_native(
        {id, name, type, value, constraints, metadata, version, source, created, updated}
      ) do
    %__MODULE__{
      id: id,
      name: name,
      type: type,
      value: value,
      constraints: constraints,
      metadata: metadata,
      version: version,
      source: source,
      created_at: datetime(created),
      last_updated_at: datetime(updated)
    }
  end

  defp datetime({year, month, day, hour, minute, second, microsecond}) do
    %DateTime{
      calendar: Calendar.ISO,
      year: year,
      month: month,
      day: day,
      hour: hour,
      minute: minute,
      second: second,
      microsecond: {microsecond, 6},
      std_offset: 0,
      utc_offset: 0,
      time_zone: "Etc/UTC",
      zone_abbr: "UTC"
    }
  end
end
