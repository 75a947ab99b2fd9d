defmodule DSPex.Bridge.Variable do
  @moduledoc """
  A typed, versioned variable of a session, as returned by `DSPex.Bridge.SessionStore`.

  `name` is exactly what the caller registered (an atom or a string). `version` starts at 1
  and grows by one on every committed write, rollbacks included. Timestamps are Unix
  milliseconds.

  A computed variable has `compute: {fun, inputs}` (see `DSPex.Bridge.DependencyManager`).
  `stale` is `nil`, or the reason its value could not be brought up to date, e.g.
  `{:compute_failed, exception}` or `{:upstream_failed, name}`; the value is then the last
  good one.
  """

  @enforce_keys [:session_id, :name, :type, :value, :version]
  defstruct [
    :session_id,
    :name,
    :type,
    :value,
    :version,
    :created_at,
    :updated_at,
    constraints: %{},
    metadata: %{},
    description: nil,
    compute: nil,
    stale: nil
  ]

  @typedoc "A session or variable id: an atom or a non-empty string of at most 255 bytes."
  @type id :: atom() | String.t()

  @typedoc "The supported variable types."
  @type type ::
          :float
          | :integer
          | :string
          | :boolean
          | :choice
          | :module
          | :embedding
          | :tensor
          | :json

  @type t :: %__MODULE__{
          session_id: id(),
          name: id(),
          type: type(),
          value: term(),
          version: pos_integer(),
          created_at: integer(),
          updated_at: integer(),
          constraints: map(),
          metadata: map(),
          description: String.t() | nil,
          compute: {(map() -> term()), [id()]} | nil,
          stale: term() | nil
        }
end
