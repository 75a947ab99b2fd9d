defmodule DSPex.Bridge.SessionStore do
  @moduledoc """
  The BridgedState reference backend: sessions of typed, versioned variables in ETS.

  * **Reads** (`get_variable/3`, `get_value/3`, `list_variables/2`, `get_history/3`) are ETS
    lookups in the calling process; they never wait on another process.
  * **Writes** to one session are serialized by that session's process, so versions and
    history are exact; writes to different sessions run in parallel.
  * Every operation takes `caller:` (the requesting session, default the owner) and
    `context:` (a map, default `%{}`). Variable operations by another session are decided
    by the variable's access policy (`DSPex.Bridge.AccessControl`): `:read` for
    get/list/history, `:write` for update/rollback/delete, `:observe` for watch. Session-wide
    operations (register, export, delete, settings, dependencies) are the owner's alone. A
    denied caller learns nothing: a missing variable and a forbidden one both give
    `{:error, :access_denied}`, and `list_variables/2` shows only what it may read.
  * Sessions idle for longer than their TTL expire (between `ttl` and `1.25 * ttl` after
    their last read or write): their variables are freed and
    `[:dspex, :bridge, :session, :expired]` is emitted.

  ## Example

      iex> alias DSPex.Bridge.SessionStore
      iex> {:ok, "doc_session"} = SessionStore.create_session("doc_session", ttl: 60_000)
      iex> {:ok, v1} = SessionStore.register_variable("doc_session", :temperature, :float, 0.7,
      ...>   constraints: [min: 0.0, max: 2.0])
      iex> v1.version
      1
      iex> {:ok, v2} = SessionStore.update_variable("doc_session", :temperature, 0.9, expected_version: 1)
      iex> {v2.value, v2.version}
      {0.9, 2}
      iex> SessionStore.update_variable("doc_session", :temperature, 1.0, expected_version: 1)
      {:error, {:version_mismatch, 2}}
      iex> SessionStore.update_variable("doc_session", :temperature, 5.0)
      {:error, {:invalid_value, {:above_max, 2.0}}}
      iex> {:ok, v3} = SessionStore.rollback_variable("doc_session", :temperature, 1)
      iex> {v3.value, v3.version}
      {0.7, 3}
      iex> SessionStore.delete_session("doc_session")
      :ok

  ## Errors

  Every function returns `{:error, reason}` for bad input; nothing stored changes when a call
  fails. Reasons:

  | reason                                 | when                                                |
  |----------------------------------------|-----------------------------------------------------|
  | `{:invalid_session_id, term}`          | not an atom or a 1..255-byte string                |
  | `{:invalid_name, term}`                | a variable name that is not an id                   |
  | `{:invalid_option, detail}`            | unknown option, wrong option type, opts not a list  |
  | `:session_not_found`                   | no such session                                     |
  | `{:session_exists, id}`                | `create_session/2` or import of an existing id      |
  | `{:variable_not_found, name}`          | no such variable in the session                     |
  | `{:variable_exists, name}`             | registering a name twice                            |
  | `{:invalid_type, type}`                | not one of `DSPex.Bridge.VariableType.types/0`      |
  | `{:invalid_constraints, detail}`       | see `DSPex.Bridge.VariableType`                     |
  | `{:invalid_value, detail}`             | see `DSPex.Bridge.VariableType`                     |
  | `{:version_mismatch, current}`         | `expected_version:` differs from the stored version |
  | `{:version_not_found, version}`        | rollback to a version no longer in history          |
  | `{:too_many_variables, limit}`         | the session's `max_variables` is reached            |
  | `{:duplicate_variable, name}`          | a batch names one variable twice                    |
  | `{name, reason}`                       | which variable of an `update_variables/3` failed    |
  | `:access_denied`                       | the caller may not do this                          |
  | `{:invalid_snapshot, detail}`          | `import_session/2` of a corrupt or foreign binary   |
  | `{:invalid_compute, detail}`           | a `compute:` that is not `{fun/1, [input, ...]}`     |
  | `:would_create_cycle`                  | an edge or a computed input that would close a cycle |
  | `{:has_dependents, names}`             | deleting a variable others are computed from        |
  | `:timeout`                             | the session process did not answer within `timeout:`|
  | `{:locked_by, optimizer_id}`           | an optimizer holds the variable's lock              |
  | `:stale_token`                         | `lock_token:` is not the current holder's           |
  """

  alias DSPex.Bridge.{AccessControl, Analytics, Events, Native, Options, Variable, VariableType}
  alias DSPex.Bridge.Analytics.Recorder
  alias DSPex.Bridge.SessionStore.{Backends, Codec, Limits, Session, Tables}
  import DSPex.Bridge.Options, only: [is_id: 1]
  # A session this node does not hold may be owned by another node (DSPex.Bridge.HAManager):
  # the call goes there. Only a failed local call is routed, so local sessions pay nothing.
  import DSPex.Bridge.HAManager.Routed, only: [defrouted: 1]

  @sessions :dspex_bridge_sessions
  @variables :dspex_bridge_variables
  @history :dspex_bridge_history

  @default_ttl 3_600_000
  @default_history 50
  @default_max_variables 100_000
  @max_batch 10_000

  @type session_id :: Variable.id()
  @type name :: Variable.id()
  @type reason :: term()

  @typedoc "Options every operation accepts."
  @type access_opt :: {:caller, session_id()} | {:context, map()} | {:timeout, timeout()}

  @typedoc "A history entry, newest first in `get_history/3`."
  @type history_entry :: %{
          version: pos_integer(),
          value: term(),
          updated_at: integer(),
          change: :register | :update | {:rollback, pos_integer()}
        }

  @access %{caller: &Options.id?/1, context: &is_map/1, timeout: &Options.timeout?/1}

  # ---------------------------------------------------------------------------------------
  # sessions

  @doc """
  Creates a session.

  Options: `ttl:` idle time in ms before expiry (at most `4_294_967_295`), or `:infinity`
  (default from the `:dspex_bridge, :session_ttl` config, else one hour); `history_limit:`
  versions kept per variable (default 50, at most 10,000); `max_variables:` (default 100,000,
  at most 10,000,000); `metadata:` a map;
  `propagation:` `:sync` (default: a write returns after computed variables downstream are
  recomputed) or `:async` (a write returns at once; see `await_propagation/2`).
  """
  @spec create_session(session_id(), keyword()) :: {:ok, session_id()} | {:error, reason()}
  def create_session(session_id, opts \\ [])

  def create_session(session_id, opts) when is_id(session_id) do
    spec = %{
      ttl: &Limits.ttl?/1,
      history_limit: &Limits.history_limit?/1,
      max_variables: &Limits.max_variables?/1,
      metadata: &is_map/1,
      propagation: &(&1 in [:sync, :async]),
      backend: fn _ -> true end
    }

    with {:ok, o} <- Options.take(opts, spec),
         backend = Map.get(o, :backend, Backends.default()),
         :ok <- Backends.check_backend(backend) do
      meta = %{
        id: session_id,
        created_at: System.system_time(:millisecond),
        ttl: Map.get(o, :ttl, Application.get_env(:dspex_bridge, :session_ttl, @default_ttl)),
        history_limit: Map.get(o, :history_limit, @default_history),
        max_variables: Map.get(o, :max_variables, @default_max_variables),
        metadata: Map.get(o, :metadata, %{}),
        propagation: Map.get(o, :propagation, :sync)
      }

      Backends.module(backend).create_session(meta)
    end
  end

  def create_session(session_id, _opts), do: {:error, {:invalid_session_id, session_id}}

  @doc false
  # The local backend's creation (LocalBackend): a session process on this node.
  def create_here(meta) do
    # A session of this id on Redis would hide behind a local one.
    case Backends.on_redis(meta.id) do
      {:ok, false} -> start_session(Map.put(meta, :core, Native.session_new()), :empty, :created)
      {:ok, true} -> {:error, {:session_exists, meta.id}}
      error -> error
    end
  end

  @doc false
  # The local backend's import (LocalBackend); meta.core holds the snapshot's graph.
  def import_here(meta, vars, hist) do
    case Backends.on_redis(meta.id) do
      {:ok, false} -> start_session(meta, {:import, vars, hist}, :created)
      {:ok, true} -> {:error, {:session_exists, meta.id}}
      error -> error
    end
  end

  @doc false
  # The local backend's other calls (LocalBackend): this node's answer alone, never routed.
  def here(:delete_session, [id]), do: local_delete_session(id, [])
  def here(:get_session, [id]), do: local_get_session(id, [])
  def here(:get_variable, [id, name]), do: local_get_variable(id, name, [])
  def here(:list_variables, [id]), do: local_list_variables(id, [])
  def here(:delete_variable, [id, name]), do: local_delete_variable(id, name, [])
  def here(:get_history, [id, name]), do: local_get_history(id, name, [])
  def here(:rollback_variable, [id, name, v]), do: local_rollback_variable(id, name, v, [])
  def here(:export_session, [id]), do: local_export_session(id, [])
  def here(:watch, [id, name, pid]), do: local_watch(id, name, pid: pid)
  def here(:unwatch, [id, name, pid]), do: local_unwatch(id, name, pid: pid)

  def here(:register_variable, [id, name, type, value, opts]),
    do: local_register_variable(id, name, type, value, Map.to_list(opts))

  def here(:update_variables, [id, updates, opts]),
    do: local_update_variables(id, updates, Map.to_list(opts))

  @doc false
  # A session of this id on this node would hide a Redis one (RedisBackend's creation).
  def absent_here(id) do
    if :ets.member(@sessions, id), do: {:error, {:session_exists, id}}, else: :ok
  end

  defp start_session(meta, init, event) do
    {access, meta} = Map.pop(meta, :access, [])
    child_init = if init == :empty, do: :empty, else: :awaiting_load

    with {:ok, pid} <- start_child(meta, child_init),
         :ok <- hand_over(pid, init, access) do
      Analytics.gauge(:active_sessions, :ets.info(@sessions, :size))
      Events.emit([:dspex, :bridge, :session, event], %{}, %{session_id: meta.id})
      {:ok, meta.id}
    end
  end

  defp start_child(meta, init) do
    case DynamicSupervisor.start_child(
           DSPex.Bridge.SessionStore.Sessions,
           {Session, {meta.id, meta, init}}
         ) do
      {:ok, pid} -> {:ok, pid}
      {:error, :session_exists} -> {:error, {:session_exists, meta.id}}
    end
  end

  defp hand_over(_pid, :empty, _access), do: :ok

  defp hand_over(pid, {:import, vars, hist}, access),
    do: hand_over(pid, {:import, vars, hist, nil}, access)

  defp hand_over(pid, {:import, vars, hist, promotion}, access) do
    ref = Process.monitor(pid)
    send(pid, {:dspex_load, self(), ref, vars, hist, access, promotion})

    receive do
      {^ref, :loaded} ->
        Process.demonitor(ref, [:flush])
        :ok

      {:DOWN, ^ref, :process, _, reason} ->
        {:error, {:import_failed, reason}}
    end
  end

  @doc "Deletes a session and everything in it. Only the owner may delete it."
  @spec delete_session(session_id(), [access_opt()]) :: :ok | {:error, reason()}
  defrouted delete_session(session_id, opts \\ [])

  defp local_delete_session(session_id, opts) do
    with {:ok, o} <- check(session_id, opts),
         :ok <- authorize(session_id, o, :owner),
         :ok <- call(session_id, :delete, o) do
      Analytics.gauge(:active_sessions, :ets.info(@sessions, :size))
      Events.emit([:dspex, :bridge, :session, :deleted], %{}, %{session_id: session_id})
    end
  end

  @doc "The ids of all live sessions."
  @spec list_sessions() :: [session_id()]
  def list_sessions,
    do: DSPex.Bridge.SessionStore.LocalBackend.list_sessions() ++ Backends.list_sessions()

  @doc """
  A session's settings and size: `%{id, created_at, ttl, history_limit, max_variables,
  metadata, propagation, variable_count}`.
  """
  @spec get_session(session_id(), [access_opt()]) :: {:ok, map()} | {:error, reason()}
  defrouted get_session(session_id, opts \\ [])

  defp local_get_session(session_id, opts) do
    with {:ok, o} <- check(session_id, opts),
         :ok <- authorize(session_id, o, :owner) do
      case :ets.lookup(@sessions, session_id) do
        [{_, meta, _pid, touch}] ->
          :atomics.put(touch, 1, 1)

          {:ok,
           meta
           |> Map.delete(:core)
           |> Map.put(:variable_count, Session.count_variables(session_id))}

        [] ->
          {:error, :session_not_found}
      end
    end
  end

  # ---------------------------------------------------------------------------------------
  # variables

  @doc """
  Registers a typed variable. `name` is an atom or a string and comes back exactly as given.

  Options: `constraints:` (map or keyword list, see `DSPex.Bridge.VariableType`),
  `metadata:` (map), `description:` (string), `access_mode:` (`:private` by default,
  `:protected` or `:public`) and `access_rules:` (see `DSPex.Bridge.AccessControl`), plus
  `caller:`, `context:`, `timeout:`.

  `compute: {fun, inputs}` declares a computed variable: `fun` takes a map of input name to
  value and returns the value; `inputs` are existing variables of the session. Pass `nil` as
  `value`: it is computed at once, and again whenever an input changes (see
  `DSPex.Bridge.DependencyManager`). A `compute` that is not such a pair is refused with
  `{:error, {:invalid_compute, term}}`.
  """
  @spec register_variable(session_id(), name(), Variable.type(), term(), keyword()) ::
          {:ok, Variable.t()} | {:error, reason()}
  defrouted register_variable(session_id, name, type, value, opts \\ [])

  defp local_register_variable(session_id, name, type, value, opts) do
    spec =
      Map.merge(@access, %{
        constraints: &(is_map(&1) or is_list(&1)),
        metadata: &is_map/1,
        description: &(is_nil(&1) or is_binary(&1)),
        compute: fn _ -> true end,
        access_mode: &(&1 in [:private, :protected, :public]),
        access_rules: &is_list/1
      })

    with {:ok, o} <- check(session_id, name, opts, spec),
         :ok <- check_type(type),
         :ok <- authorize(session_id, o, :owner),
         {:ok, rules} <- AccessControl.normalize_rules(Map.get(o, :access_rules, [])) do
      o = Map.merge(o, %{access_rules: rules, access_mode: Map.get(o, :access_mode, :private)})

      timed(:write, session_id, name, fn ->
        call(session_id, {:register, name, type, value, o}, o)
      end)
    end
  end

  @doc """
  Reads a variable: `{:ok, %DSPex.Bridge.Variable{}}`. One ETS lookup; no process is called.
  """
  @spec get_variable(session_id(), name(), [access_opt()]) ::
          {:ok, Variable.t()} | {:error, reason()}
  defrouted get_variable(session_id, name, opts \\ [])

  defp local_get_variable(session_id, name, []) when is_id(session_id) and is_id(name) do
    if Recorder.count_read() or Events.enabled?() do
      timed(:read, session_id, name, fn -> lookup_or_cached(session_id, name) end)
    else
      lookup_or_cached(session_id, name)
    end
  end

  defp local_get_variable(session_id, name, opts) do
    Recorder.count_read()

    with {:ok, o} <- check(session_id, name, opts, @access),
         :ok <- authorize(session_id, name, o, :read) do
      timed(:read, session_id, name, fn -> lookup(session_id, name) end)
    end
  end

  @doc "Reads just a variable's value."
  @spec get_value(session_id(), name(), [access_opt()]) :: {:ok, term()} | {:error, reason()}
  def get_value(session_id, name, opts \\ []) do
    case get_variable(session_id, name, opts) do
      {:ok, %Variable{value: value}} -> {:ok, value}
      error -> error
    end
  end

  # The owner's read: a variable this node does not hold may be one of a Redis session
  # that this node caches (sessions never shadow each other across backends).
  defp lookup_or_cached(session_id, name), do: lookup(session_id, name, true)

  defp cached_or_missing(session_id, name) do
    case Backends.cached_variable(session_id, name) do
      {:ok, _} = hit -> hit
      :miss -> missing(session_id, name)
    end
  end

  defp lookup(session_id, name, cached? \\ false) do
    case :ets.lookup(@variables, {session_id, name}) do
      [{_, var, touch}] ->
        :atomics.put(touch, 1, 1)
        {:ok, var}

      [] when cached? ->
        cached_or_missing(session_id, name)

      [] ->
        missing(session_id, name)
    end
  end

  defp missing(session_id, name) do
    if :ets.member(@sessions, session_id),
      do: {:error, {:variable_not_found, name}},
      else: {:error, :session_not_found}
  end

  @doc "All variables of a session, ordered by name."
  @spec list_variables(session_id(), [access_opt()]) :: {:ok, [Variable.t()]} | {:error, reason()}
  def list_variables(session_id, opts \\ []) do
    session_id
    |> local_list_variables(opts)
    |> DSPex.Bridge.HAManager.Router.routed(__MODULE__, session_id, :list_variables, [
      session_id,
      opts
    ])
    |> empty_for_foreign(session_id, opts)
  end

  # Another session sees a session that is nowhere as empty (it learns nothing).
  defp empty_for_foreign({:error, :session_not_found}, session_id, opts) when is_list(opts) do
    case List.keyfind(opts, :caller, 0) do
      {:caller, caller} when caller != session_id -> {:ok, []}
      _ -> {:error, :session_not_found}
    end
  end

  defp empty_for_foreign(result, _session_id, _opts), do: result

  defp local_list_variables(session_id, opts) do
    with {:ok, o} <- check(session_id, opts) do
      case {:ets.lookup(@sessions, session_id), foreign_caller(session_id, o)} do
        {[{_, _meta, _pid, touch}], nil} ->
          :atomics.put(touch, 1, 1)
          {:ok, :ets.select(@variables, [{{{session_id, :_}, :"$1", :_}, [], [:"$1"]}])}

        # Not here: the owner node or the Redis backend may hold it (see empty_for_foreign).
        {[], _} ->
          {:error, :session_not_found}

        # Another session sees only what it may read.
        {_, caller} ->
          vars = :ets.select(@variables, [{{{session_id, :_}, :"$1", :_}, [], [:"$1"]}])
          context = Map.get(o, :context, %{})

          {:ok,
           Enum.filter(
             vars,
             &(AccessControl.decide({session_id, &1.name}, caller, :read, context) == :ok)
           )}
      end
    end
  end

  defp foreign_caller(session_id, %{caller: caller}) when caller != session_id, do: caller
  defp foreign_caller(_session_id, _opts), do: nil

  @doc """
  Writes a new value; the version grows by one.

  Options: `expected_version:` refuses the write with `{:error, {:version_mismatch, current}}`
  unless the stored version is that one; `metadata:` is merged into the variable's metadata;
  `lock_token:` the fencing token of an optimizer lock on the variable
  (`DSPex.Bridge.OptimizerCoordinator`, `session_id:` this session, var id the name): a locked
  variable takes writes only with its holder's token (`{:error, {:locked_by, optimizer_id}}`
  without, `{:error, :stale_token}` with another); plus `caller:`, `context:`, `timeout:`.
  """
  @spec update_variable(session_id(), name(), term(), keyword()) ::
          {:ok, Variable.t()} | {:error, reason()}
  defrouted update_variable(session_id, name, value, opts \\ [])

  defp local_update_variable(session_id, name, value, opts) do
    spec =
      Map.merge(@access, %{
        expected_version: &Options.pos_integer?/1,
        metadata: &is_map/1,
        lock_token: &Options.pos_integer?/1
      })

    with {:ok, o} <- check(session_id, name, opts, spec),
         :ok <- authorize(session_id, name, o, :write) do
      expected = if v = o[:expected_version], do: %{name => v}, else: %{}
      o = if t = o[:lock_token], do: Map.put(o, :lock_tokens, %{name => t}), else: o

      timed(:write, session_id, name, fn ->
        case call(
               session_id,
               {:update, [{name, value}], Map.put(o, :expected_versions, expected)},
               o
             ) do
          {:ok, [var]} -> {:ok, var}
          error -> error
        end
      end)
    end
  end

  @doc """
  Writes several variables of one session, all or nothing.

  `updates` is a map or a list of `{name, value}`. Options: `expected_versions:` a map of
  name to version; `lock_tokens:` a map of name to fencing token; `metadata:`; plus `caller:`, `context:`, `timeout:`. On failure the error
  names the variable: `{:error, {name, reason}}`, and nothing was written.
  """
  @spec update_variables(session_id(), map() | [{name(), term()}], keyword()) ::
          {:ok, [Variable.t()]} | {:error, reason()}
  defrouted update_variables(session_id, updates, opts \\ [])

  defp local_update_variables(session_id, updates, opts) do
    spec =
      Map.merge(@access, %{
        expected_versions: &is_map/1,
        metadata: &is_map/1,
        lock_tokens: &is_map/1
      })

    with {:ok, o} <- check(session_id, opts, spec),
         {:ok, updates} <- check_updates(updates),
         :ok <- authorize_all(session_id, Enum.map(updates, &elem(&1, 0)), o, :write) do
      timed(:write, session_id, nil, fn ->
        call(session_id, {:update, updates, Map.put_new(o, :expected_versions, %{})}, o)
      end)
    end
  end

  defp check_updates(updates) when is_map(updates), do: check_updates(Map.to_list(updates))

  defp check_updates(updates) when is_list(updates) and length(updates) <= @max_batch do
    # Enum.reject, not Enum.find: a bad entry may itself be nil or false.
    case Enum.reject(updates, &match?({name, _} when is_id(name), &1)) do
      [] -> {:ok, updates}
      [{name, _} | _] -> {:error, {:invalid_name, name}}
      [other | _] -> {:error, {:invalid_option, {:updates, other}}}
    end
  end

  defp check_updates(updates) when is_list(updates) do
    if Options.proper_list?(updates),
      do: {:error, {:invalid_option, {:updates, {:too_many, length(updates), @max_batch}}}},
      else: {:error, {:invalid_option, {:updates, updates}}}
  end

  defp check_updates(other), do: {:error, {:invalid_option, {:updates, other}}}

  @doc "Deletes a variable and its history; watchers get `{:dspex_variable_deleted, session_id, name}`."
  @spec delete_variable(session_id(), name(), [access_opt()]) :: :ok | {:error, reason()}
  defrouted delete_variable(session_id, name, opts \\ [])

  defp local_delete_variable(session_id, name, opts) do
    with {:ok, o} <- check(session_id, name, opts, @access),
         :ok <- authorize(session_id, name, o, :write) do
      result = call(session_id, {:delete_variable, name}, o)
      if result == :ok, do: emit(:delete, session_id, name, 0)
      result
    end
  end

  # ---------------------------------------------------------------------------------------
  # history

  @doc "The last versions of a variable (up to the session's `history_limit`), newest first."
  @spec get_history(session_id(), name(), [access_opt()]) ::
          {:ok, [history_entry()]} | {:error, reason()}
  defrouted get_history(session_id, name, opts \\ [])

  defp local_get_history(session_id, name, opts) do
    with {:ok, o} <- check(session_id, name, opts, @access),
         :ok <- authorize(session_id, name, o, :read),
         {:ok, _var} <- lookup(session_id, name) do
      case :ets.lookup(@history, {session_id, name}) do
        [{_, entries}] -> {:ok, entries}
        [] -> {:ok, []}
      end
    end
  end

  @doc """
  Writes the value a variable had at `version` as a new version (history is never rewritten).
  The old value is checked against the current constraints.
  """
  @spec rollback_variable(session_id(), name(), pos_integer(), [access_opt()]) ::
          {:ok, Variable.t()} | {:error, reason()}
  defrouted rollback_variable(session_id, name, version, opts \\ [])

  defp local_rollback_variable(session_id, name, version, opts) do
    with {:ok, o} <- check(session_id, name, opts, @access),
         :ok <- check_version(version),
         :ok <- authorize(session_id, name, o, :write) do
      timed(:write, session_id, name, fn -> call(session_id, {:rollback, name, version}, o) end)
    end
  end

  defp check_version(v) when is_integer(v) and v > 0, do: :ok
  defp check_version(v), do: {:error, {:invalid_option, {:version, v}}}

  # ---------------------------------------------------------------------------------------
  # watchers

  @doc """
  Sends `{:dspex_variable_changed, session_id, name, %{old: old, new: new, version: v}}` to
  `pid` (default the caller) on every committed write of the variable, and
  `{:dspex_variable_deleted, session_id, name}` when it is deleted. A watch of a session
  under HA moves with it (migration, failover) and keeps its messages coming from the new
  owner; a watch that ends otherwise says so with
  `{:dspex_watch_lost, session_id, name, reason}` (`:session_deleted`, `:session_expired`,
  `:session_crashed`, or `:noconnection` when the watcher's node was lost). Watching twice is a
  no-op; a watcher that exits is dropped. Returns the variable as it is now.
  """
  @spec watch(session_id(), name(), keyword()) :: {:ok, Variable.t()} | {:error, reason()}
  defrouted watch(session_id, name, opts \\ [])

  defp local_watch(session_id, name, opts) do
    with {:ok, o} <- check(session_id, name, opts, Map.put(@access, :pid, &is_pid/1)),
         :ok <- authorize(session_id, name, o, :observe) do
      call(session_id, {:watch, name, Map.get(o, :pid, self())}, o)
    end
  end

  @doc "Stops watching. Unknown watchers are a no-op."
  @spec unwatch(session_id(), name(), keyword()) :: :ok | {:error, reason()}
  defrouted unwatch(session_id, name, opts \\ [])

  defp local_unwatch(session_id, name, opts) do
    with {:ok, o} <- check(session_id, name, opts, Map.put(@access, :pid, &is_pid/1)) do
      call(session_id, {:unwatch, name, Map.get(o, :pid, self())}, o)
    end
  end

  @doc """
  Returns once every propagation queued by earlier writes of an `:async` session is done
  (immediately for `:sync` sessions).
  """
  @spec await_propagation(session_id(), [access_opt()]) :: :ok | {:error, reason()}
  defrouted await_propagation(session_id, opts \\ [])

  defp local_await_propagation(session_id, opts) do
    with {:ok, o} <- check(session_id, opts),
         :ok <- authorize(session_id, o, :owner) do
      call(session_id, :await_propagation, o)
    end
  end

  # ---------------------------------------------------------------------------------------
  # export / import

  @doc """
  Serializes a session (settings, variables, history, dependency graph) into one binary: a versioned frame
  with a CRC-32 checksum, taken as a consistent cut between writes.
  """
  @spec export_session(session_id(), [access_opt()]) :: {:ok, binary()} | {:error, reason()}
  defrouted export_session(session_id, opts \\ [])

  defp local_export_session(session_id, opts) do
    with {:ok, o} <- check(session_id, opts),
         :ok <- authorize(session_id, o, :owner),
         {:ok, meta, vars, hist, edges} <- call(session_id, :export, o) do
      Codec.encode(meta, vars, hist, edges)
    end
  end

  @doc """
  Recreates a session from `export_session/1` output. The frame, checksum and every variable
  are verified before anything is stored. Options: `session_id:` to import under another id;
  `backend:` `:local` or `:redis` (default: the configured default). A snapshot of either
  backend imports into either, so this moves a session between them.
  """
  @spec import_session(binary(), keyword()) :: {:ok, session_id()} | {:error, reason()}
  def import_session(binary, opts \\ []) do
    spec = %{session_id: &Options.id?/1, backend: fn _ -> true end}

    with {:ok, o} <- Options.take(opts, spec),
         backend = Map.get(o, :backend, Backends.default()),
         :ok <- Backends.check_backend(backend),
         {:ok, meta, vars, hist} <- Codec.decode(binary) do
      # meta.core was rebuilt from the snapshot's edges by the codec.
      id = Map.get(o, :session_id, meta.id)
      vars = Enum.map(vars, &%{&1 | session_id: id})
      meta = %{meta | id: id}
      Backends.module(backend).import_session(meta, vars, hist, Native.graph_edges(meta.core))
    end
  end

  @doc false
  # Import of a frame from another node of the cluster (DSPex.Bridge.HAManager): the sender
  # is as trusted as distribution itself, so atoms the payload names may be created here.
  # With `replay: ops` (a replica's promotion), the new session applies those writes before
  # it takes any call, and holds new writes until HA registers it.
  def import_trusted(frame, opts \\ []) do
    promotion = if ops = opts[:replay], do: {:replay, ops}

    with {:ok, meta, vars, hist} <- Codec.decode(frame, :trusted) do
      start_session(meta, {:import, vars, hist, promotion}, :created)
    end
  end

  # ---------------------------------------------------------------------------------------
  # plumbing

  defp check(session_id, opts, spec \\ @access)
  defp check(session_id, opts, spec) when is_id(session_id), do: Options.take(opts, spec)
  defp check(session_id, _opts, _spec), do: {:error, {:invalid_session_id, session_id}}

  defp check(session_id, name, opts, spec) when is_id(name), do: check(session_id, opts, spec)

  defp check(session_id, name, _opts, _spec) when is_id(session_id),
    do: {:error, {:invalid_name, name}}

  defp check(session_id, _name, _opts, _spec), do: {:error, {:invalid_session_id, session_id}}

  defp check_type(type) do
    if type in VariableType.types(), do: :ok, else: {:error, {:invalid_type, type}}
  end

  # Session-wide operations (settings, registering, export, deletion, dependency graph
  # changes) belong to the owner alone.
  defp authorize(session_id, opts, _permission) do
    case opts do
      %{caller: caller} when caller != session_id -> {:error, :access_denied}
      _ -> :ok
    end
  end

  # Variable operations by another session go to the variable's access policy. The owner
  # (no caller:, or caller: itself) never pays for a decision.
  defp authorize(session_id, name, opts, permission) do
    case opts do
      %{caller: caller} when caller != session_id ->
        AccessControl.decide({session_id, name}, caller, permission, Map.get(opts, :context, %{}))

      _ ->
        :ok
    end
  end

  defp authorize_all(session_id, names, opts, permission) do
    Enum.reduce_while(names, :ok, fn name, :ok ->
      case authorize(session_id, name, opts, permission) do
        :ok -> {:cont, :ok}
        error -> {:halt, error}
      end
    end)
  end

  @doc false
  # The entry point DependencyManager shares: checks ids and options, authorizes, then
  # sends `message` to the session's process.
  def session_call(session_id, message, opts, permission, spec \\ @access) do
    with {:ok, o} <- check(session_id, opts, spec),
         :ok <- authorize(session_id, o, permission) do
      call(session_id, message, o)
    end
  end

  @doc false
  def session_graph(session_id, [], _permission) when is_id(session_id), do: graph_of(session_id)

  def session_graph(session_id, opts, permission) do
    with {:ok, o} <- check(session_id, opts),
         :ok <- authorize(session_id, o, permission) do
      graph_of(session_id)
    end
  end

  # Live sessions publish their graph in the NIF's directory (see Session.init/1).
  defp graph_of(session_id), do: Native.graph_of(session_id)

  @doc false
  # A message to the session's own process (what SessionStore.Session.record/2 sends).
  def session_message(session_id, message, timeout),
    do: call(session_id, message, %{timeout: timeout})

  defp call(session_id, message, opts) do
    case :ets.lookup(@sessions, session_id) do
      [{_, _meta, pid, _touch}] ->
        try do
          GenServer.call(pid, message, Map.get(opts, :timeout, 5_000))
        catch
          :exit, {:timeout, _} ->
            {:error, :timeout}

          :exit, {reason, _} when reason in [:noproc, :normal, :shutdown] ->
            {:error, :session_not_found}
        end

      [] ->
        {:error, :session_not_found}
    end
  end

  # Every write and every sampled read (see Analytics.Recorder) is timed into analytics;
  # events go out when someone listens.
  defp timed(kind, session_id, name, fun) do
    start = System.monotonic_time()
    result = fun.()
    elapsed = System.monotonic_time() - start
    analyze(kind, System.convert_time_unit(elapsed, :native, :nanosecond) / 1.0e9, result)

    if Events.enabled?() do
      duration = System.convert_time_unit(elapsed, :native, :microsecond)
      emit_result(kind, session_id, name, duration, result)
    end

    result
  end

  defp analyze(:read, seconds, {:ok, _}),
    do: Analytics.observe(:variable_read_latency_seconds, seconds)

  defp analyze(:write, seconds, {:ok, vars}) do
    Analytics.observe(:variable_write_latency_seconds, seconds)
    Analytics.increment(:variable_writes, if(is_list(vars), do: length(vars), else: 1))
  end

  defp analyze(kind, _seconds, _error),
    do: Analytics.increment(:operation_errors, 1, %{op: kind})

  defp emit_result(kind, session_id, _name, duration, {:ok, vars}) when is_list(vars) do
    for var <- vars, do: emit(kind, session_id, var.name, duration, var.version)
  end

  defp emit_result(kind, session_id, name, duration, {:ok, %Variable{version: v}}),
    do: emit(kind, session_id, name, duration, v)

  defp emit_result(_kind, _session_id, _name, _duration, _error), do: :ok

  defp emit(kind, session_id, name, duration, version \\ nil) do
    Events.emit([:dspex, :bridge, :variable, kind], %{duration_us: duration}, %{
      session_id: session_id,
      name: name,
      version: version
    })
  end

  @doc false
  def tables, do: {Tables.sessions(), Tables.variables(), Tables.history()}
end
