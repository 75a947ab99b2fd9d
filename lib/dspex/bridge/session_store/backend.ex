defmodule DSPex.Bridge.SessionStore.Backend do
  @moduledoc """
  Where a session's state is stored: the behaviour of `DSPex.Bridge.SessionStore`'s
  backends. Two implement it:

  * `DSPex.Bridge.SessionStore.LocalBackend` (`:local`, the default): this node's memory,
    ETS and the NIF's session core, one process per session, replicated by
    `DSPex.Bridge.HAManager` when asked;
  * `DSPex.Bridge.SessionStore.RedisBackend` (`:redis`): a Redis server that every node
    shares.

  You do not call a backend yourself: `create_session/2` and `import_session/2` of
  `SessionStore` take `backend: :local | :redis` (default `config :dspex_bridge, backend:`)
  and create the session through its backend's `c:create_session/1` or
  `c:import_session/4`; every later call on the session finds it (this node's sessions
  first, so they pay nothing for the seam, then the HA owner, then Redis) and runs there.
  The same test suite of SessionStore runs against both, and a contract test calls both
  through these callbacks.

  The callbacks take arguments SessionStore has already checked (ids, names, types, option
  maps) and return SessionStore's results: `{:ok, _}` or `{:error, reason}` with the same
  reasons on every backend (`:session_not_found`, `{:variable_not_found, name}`,
  `{:version_mismatch, current}`, ...), plus `{:error, :backend_unavailable}` for a
  backend that cannot be reached.
  """

  alias DSPex.Bridge.Variable

  @type id :: DSPex.Bridge.SessionStore.session_id()
  @type name :: DSPex.Bridge.SessionStore.name()
  @type reason :: term()

  @typedoc """
  A new session's settings: `%{id, created_at, ttl, history_limit, max_variables,
  metadata, propagation}` (and `:core`, the session's graph, on an import).
  """
  @type meta :: map()

  @typedoc "One history entry: `%{version, value, updated_at, change}`."
  @type entry :: map()

  @doc "Creates a session; `{:error, {:session_exists, id}}` if one of that id exists."
  @callback create_session(meta()) :: {:ok, id()} | {:error, reason()}

  @doc """
  Creates a session from a decoded snapshot: its variables, each variable's history
  (`{name, entries}`, newest first) and its dependency edges (`{from, to, kind}`).
  """
  @callback import_session(meta(), [Variable.t()], [{name(), [entry()]}], [{name(), name(), term()}]) ::
              {:ok, id()} | {:error, reason()}

  @doc "Deletes a session and everything in it."
  @callback delete_session(id()) :: :ok | {:error, reason()}

  @doc "A session's settings and `:variable_count`."
  @callback get_session(id()) :: {:ok, map()} | {:error, reason()}

  @doc "The ids of the live sessions this backend holds."
  @callback list_sessions() :: [id()]

  @doc "Registers a variable; `opts` is SessionStore's checked option map."
  @callback register_variable(id(), name(), Variable.type(), term(), map()) ::
              {:ok, Variable.t()} | {:error, reason()}

  @callback get_variable(id(), name()) :: {:ok, Variable.t()} | {:error, reason()}

  @doc "All variables of a session, ordered by name."
  @callback list_variables(id()) :: {:ok, [Variable.t()]} | {:error, reason()}

  @doc """
  Writes `updates` (`[{name, value}]`) all or none. `opts`: `expected_versions:` and
  `lock_tokens:` (maps by name), `metadata:` (merged into each variable's).
  """
  @callback update_variables(id(), [{name(), term()}], map()) ::
              {:ok, [Variable.t()]} | {:error, reason()}

  @callback delete_variable(id(), name()) :: :ok | {:error, reason()}

  @doc "A variable's history, newest first."
  @callback get_history(id(), name()) :: {:ok, [entry()]} | {:error, reason()}

  @doc "Writes the value of `version` again, as a new version."
  @callback rollback_variable(id(), name(), pos_integer()) ::
              {:ok, Variable.t()} | {:error, reason()}

  @doc "The session as `SessionStore.export_session/2`'s binary."
  @callback export_session(id()) :: {:ok, binary()} | {:error, reason()}

  @doc """
  Sends `pid` SessionStore's watch messages for the variable from now on; returns it as it
  is now.
  """
  @callback watch(id(), name(), pid()) :: {:ok, Variable.t()} | {:error, reason()}

  @callback unwatch(id(), name(), pid()) :: :ok | {:error, reason()}

  @doc false
  # The callbacks on one session that take just their arguments: how both backends define
  # them, each by one function of its own.
  def session_callbacks do
    [
      delete_session: 1,
      get_session: 1,
      get_variable: 2,
      list_variables: 1,
      delete_variable: 2,
      get_history: 2,
      rollback_variable: 3,
      register_variable: 5,
      update_variables: 3
    ]
  end
end
