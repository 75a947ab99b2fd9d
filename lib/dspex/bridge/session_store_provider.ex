defmodule DSPex.Bridge.SessionStoreProvider do
  @moduledoc """
  DSPex's `DSPex.Bridge.StateProvider` behaviour over `DSPex.Bridge.SessionStore`, so that
  a DSPex program can keep its variables in this library's production backend (typed,
  versioned, access-controlled, replicated sessions) in place of DSPex's own `BridgedState`.

  The behaviour is declared when DSPex is there at compile time (`DSPex.Bridge.StateProvider`
  is loaded); without DSPex the module still works, as a plain module with the same calls.

      {:ok, state} = DSPex.Bridge.SessionStoreProvider.init(session_id: "program_1")
      {:ok, {"temperature", state}} =
        DSPex.Bridge.SessionStoreProvider.register_variable(state, :temperature, :float, 0.7,
          constraints: [min: 0.0, max: 2.0])
      {:ok, state} = DSPex.Bridge.SessionStoreProvider.set_variable(state, :temperature, 0.9, %{})
      {:ok, 0.9} = DSPex.Bridge.SessionStoreProvider.get_variable(state, "temperature")

  In DSPex, pick it where a context takes its backend, e.g.
  `DSPex.Context.start_link(backend: DSPex.Bridge.SessionStoreProvider)` (see DSPex's docs
  for where your version takes it).

  ## What it is

  * A variable's id is its name as text; a variable is found by its name (atom or string)
    or its id. No atom is created from an id.
  * `init/1` options: `session_id:` (default a new one), `existing_state:` (an
    `export_state/1` map to import), `ha:` (default `true`: the session is put under
    `DSPex.Bridge.HAManager`, so it is replicated and every node of the cluster reaches it),
    `delete_on_cleanup:` (default `false`: the session outlives the context and expires by
    its TTL), and `SessionStore.create_session/2`'s options (`ttl:`, `history_limit:`, ...).
    An existing session of that id is used as it is.
  * `update_variables/3` is atomic: every write or none. Its failure is
    `{:error, {:atomic_update_failed, %{id => reason}}}` (never `:partial_failure`: nothing
    was written).
  * `import_state/2` checks every variable (type, constraints, value) before it writes any;
    variables that exist are updated, the others registered.
  * `watch_variables/4` calls `watcher_fn.(identifier, old, new, metadata)` from a process
    of its own, for every committed write (`metadata`: `%{version: v}`, plus
    `initial: true` for `include_initial:`, `deleted: true` when the variable is deleted,
    `lost: reason` when the watch ended, see `DSPex.Bridge.SessionStore.watch/3`).
    Options: `include_initial:`, `filter:` `fn old, new -> boolean end`, `watcher_pid:`
    (default the caller: the watch ends when it exits).

  ## Errors

  `{:error, {:invalid_state, term}}` for a state that is not this module's,
  `{:error, :not_found}` for a missing variable, `{:error, :session_expired}` when the
  session is gone, `{:error, {:already_exists, name}}` for a second registration; other
  reasons are SessionStore's (see `DSPex.Bridge.SessionStore`).
  """

  alias DSPex.Bridge.{HAManager, Options, SessionStore, Variable, VariableType}
  alias DSPex.Bridge.SessionStoreProvider.Watcher
  alias DSPex.Bridge.SessionStore.Tables

  if Code.ensure_loaded?(DSPex.Bridge.StateProvider) do
    @behaviour DSPex.Bridge.StateProvider
  end

  defstruct [:session_id, delete_on_cleanup: false, watchers: %{}]

  @type t :: %__MODULE__{
          session_id: SessionStore.session_id(),
          delete_on_cleanup: boolean(),
          watchers: %{reference() => pid()}
        }
  @type identifier_ :: atom() | String.t()
  @type error :: {:error, term()}

  @own_opts [:session_id, :existing_state, :ha, :delete_on_cleanup]

  @spec init(keyword()) :: {:ok, t()} | error()
  def init(opts) when is_list(opts) do
    {own, session_opts} = Keyword.split(opts, @own_opts)
    id = Keyword.get_lazy(own, :session_id, fn -> "dspex_#{System.unique_integer([:positive])}" end)

    state = %__MODULE__{
      session_id: id,
      delete_on_cleanup: Keyword.get(own, :delete_on_cleanup, false) == true
    }

    with :ok <- check_own(own),
         :ok <- create_or_reuse(id, session_opts),
         :ok <- ha(id, Keyword.get(own, :ha, true)) do
      case Keyword.get(own, :existing_state) do
        nil -> {:ok, state}
        exported -> import_state(state, exported)
      end
    end
  end

  def init(opts), do: {:error, {:invalid_option, {:not_a_keyword_list, opts}}}

  defp check_own(own) do
    case Enum.find(own, fn {k, v} -> not own_ok?(k, v) end) do
      nil -> :ok
      {k, v} -> {:error, {:invalid_option, {k, v}}}
    end
  end

  defp own_ok?(k, v) when k in [:ha, :delete_on_cleanup], do: is_boolean(v)
  defp own_ok?(:existing_state, v), do: is_map(v)
  defp own_ok?(_k, _v), do: true

  # A session another node of the cluster owns is used there (calls are routed to it).
  defp create_or_reuse(id, opts) do
    case HAManager.get_session_owner(id) do
      {:ok, owner} when owner != node() -> :ok
      _ -> create_local(id, opts)
    end
  end

  defp create_local(id, opts) do
    case SessionStore.create_session(id, opts) do
      {:ok, _} -> :ok
      {:error, {:session_exists, _}} -> :ok
      error -> error
    end
  end

  defp ha(_id, false), do: :ok

  defp ha(id, true) do
    case HAManager.get_session_owner(id) do
      {:ok, _owner} -> :ok
      {:error, :not_registered} -> register(id)
    end
  end

  defp register(id) do
    case HAManager.register_session(id) do
      {:ok, _epoch} -> :ok
      {:error, :already_registered} -> :ok
      {:error, reason} -> {:error, {:ha_registration_failed, reason}}
    end
  end

  @spec cleanup(t()) :: :ok | error()
  def cleanup(state) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def cleanup(%__MODULE__{} = state) do
    for {_ref, pid} <- state.watchers, do: Watcher.stop(pid)
    if state.delete_on_cleanup, do: SessionStore.delete_session(state.session_id)
    :ok
  end

  @spec register_variable(t(), identifier_(), atom(), term(), keyword()) ::
          {:ok, {String.t(), t()}} | error()
  def register_variable(state, _, _, _, _) when not is_struct(state, __MODULE__),
    do: invalid_state(state)

  def register_variable(%__MODULE__{} = state, name, type, value, opts) when is_list(opts) do
    opts = Keyword.take(opts, [:constraints, :metadata, :description])

    case SessionStore.register_variable(state.session_id, name, type, value, opts) do
      {:ok, var} -> {:ok, {id_of(var.name), state}}
      {:error, {:variable_exists, n}} -> {:error, {:already_exists, n}}
      error -> translate(error)
    end
  end

  def register_variable(_state, _name, _type, _value, opts),
    do: {:error, {:invalid_option, {:not_a_keyword_list, opts}}}

  @spec get_variable(t(), identifier_()) :: {:ok, term()} | error()
  def get_variable(state, _) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def get_variable(%__MODULE__{} = state, identifier) do
    with {:ok, name} <- resolve(state, identifier),
         {:ok, value} <- SessionStore.get_value(state.session_id, name) do
      {:ok, value}
    else
      error -> translate(error)
    end
  end

  @spec set_variable(t(), identifier_(), term(), map()) :: {:ok, t()} | error()
  def set_variable(state, _, _, _) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def set_variable(%__MODULE__{} = state, identifier, value, metadata) when is_map(metadata) do
    with {:ok, name} <- resolve(state, identifier),
         {:ok, _var} <-
           SessionStore.update_variable(state.session_id, name, value, metadata: metadata) do
      {:ok, state}
    else
      error -> translate(error)
    end
  end

  def set_variable(_state, _identifier, _value, metadata),
    do: {:error, {:invalid_option, {:metadata, metadata}}}

  @spec delete_variable(t(), identifier_()) :: {:ok, t()} | error()
  def delete_variable(state, _) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def delete_variable(%__MODULE__{} = state, identifier) do
    with {:ok, name} <- resolve(state, identifier),
         :ok <- SessionStore.delete_variable(state.session_id, name) do
      {:ok, state}
    else
      error -> translate(error)
    end
  end

  @spec list_variables(t()) :: {:ok, [map()]} | error()
  def list_variables(state) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def list_variables(%__MODULE__{} = state) do
    case SessionStore.list_variables(state.session_id) do
      {:ok, vars} -> {:ok, Enum.map(vars, &export_variable/1)}
      error -> translate(error)
    end
  end

  @spec get_variables(t(), [identifier_()]) :: {:ok, %{String.t() => term()}} | error()
  def get_variables(state, _) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def get_variables(%__MODULE__{} = state, identifiers) when is_list(identifiers) do
    Enum.reduce_while(identifiers, {:ok, %{}}, fn identifier, {:ok, acc} ->
      with {:ok, name} <- resolve(state, identifier),
           {:ok, value} <- SessionStore.get_value(state.session_id, name) do
        {:cont, {:ok, Map.put(acc, to_string(identifier), value)}}
      else
        {:error, :session_not_found} -> {:halt, {:error, :session_expired}}
        {:error, _missing} -> {:cont, {:ok, acc}}
      end
    end)
  end

  def get_variables(_state, identifiers),
    do: {:error, {:invalid_option, {:identifiers, identifiers}}}

  @spec update_variables(t(), map(), map()) :: {:ok, t()} | error()
  def update_variables(state, _, _) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def update_variables(%__MODULE__{} = state, updates, metadata)
      when is_map(updates) and is_map(metadata) do
    resolved = Enum.map(updates, fn {id, value} -> {id, resolve(state, id), value} end)

    case Enum.find(resolved, &match?({_, {:error, _}, _}, &1)) do
      {id, {:error, reason}, _} ->
        {:error, {:atomic_update_failed, %{to_string(id) => reason}}}

      nil ->
        writes = for {_id, {:ok, name}, value} <- resolved, do: {name, value}

        case SessionStore.update_variables(state.session_id, writes, metadata: metadata) do
          {:ok, _} ->
            {:ok, state}

          {:error, {name, reason}} when is_atom(name) or is_binary(name) ->
            {:error, {:atomic_update_failed, %{id_of(name) => translate_reason(reason)}}}

          error ->
            translate(error)
        end
    end
  end

  def update_variables(_state, updates, metadata),
    do: {:error, {:invalid_option, {:updates, {updates, metadata}}}}

  @spec export_state(t()) :: {:ok, map()} | error()
  def export_state(state) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def export_state(%__MODULE__{} = state) do
    with {:ok, vars} <- list_variables(state) do
      {:ok,
       %{
         session_id: state.session_id,
         variables: Map.new(vars, &{&1.id, &1}),
         variable_index: Map.new(vars, &{to_string(&1.name), &1.id}),
         metadata: %{backend: :dspex_bridge, exported_at: DateTime.utc_now()}
       }}
    end
  end

  @spec import_state(t(), map()) :: {:ok, t()} | error()
  def import_state(state, _) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def import_state(%__MODULE__{} = state, %{variables: variables}) when is_map(variables) do
    entries = Map.values(variables)

    with :ok <- check_all(entries) do
      failures =
        for var <- entries,
            result = import_variable(state, var),
            result != :ok,
            do: {var.name, result}

      if failures == [], do: {:ok, state}, else: {:error, {:import_failed, failures}}
    end
  end

  def import_state(_state, _exported), do: {:error, :invalid_export_format}

  defp check_all(entries) do
    Enum.reduce_while(entries, :ok, fn
      %{name: name, type: type, value: value} = var, :ok when is_atom(name) or is_binary(name) ->
        with {:ok, c} <-
               VariableType.normalize_constraints(type, Map.get(var, :constraints) || %{}),
             {:ok, _} <- VariableType.validate(type, value, c) do
          {:cont, :ok}
        else
          {:error, reason} -> {:halt, {:error, {:invalid_export, {name, reason}}}}
        end

      other, :ok ->
        {:halt, {:error, {:invalid_export, {:bad_variable, other}}}}
    end)
  end

  defp import_variable(state, var) do
    opts = [constraints: var[:constraints] || %{}, metadata: var[:metadata] || %{}]

    case register_variable(state, var.name, var.type, var.value, opts) do
      {:ok, _} ->
        :ok

      {:error, {:already_exists, _}} ->
        case set_variable(state, var.name, var.value, var[:metadata] || %{}) do
          {:ok, _} -> :ok
          error -> error
        end

      error ->
        error
    end
  end

  @doc """
  What this backend can do: `atomic_updates` (`update_variables/3` is all or nothing),
  `streaming` (`watch_variables/4`), `persistent` (a session outlives the processes that use
  it; it does not outlive the node unless it is replicated), `distributed` (with `ha: true`,
  every node of the cluster reaches the session and it fails over to a replica), plus
  `versioned`, `access_control`, `optimizer_locks` and `history`.
  """
  @spec capabilities() :: map()
  def capabilities do
    %{
      atomic_updates: true,
      streaming: true,
      persistent: true,
      distributed: true,
      versioned: true,
      history: true,
      access_control: true,
      optimizer_locks: true
    }
  end

  @doc "It does not need DSPex's Python bridge: its own bridge is `DSPex.Bridge.Python`."
  @spec requires_bridge?() :: boolean()
  def requires_bridge?, do: false

  @spec watch_variables(t(), [identifier_()], function(), keyword()) ::
          {:ok, {reference(), t()}} | error()
  def watch_variables(state, _, _, _) when not is_struct(state, __MODULE__),
    do: invalid_state(state)

  def watch_variables(%__MODULE__{} = state, identifiers, watcher_fn, opts)
      when is_list(identifiers) and is_function(watcher_fn, 4) and is_list(opts) do
    names =
      for id <- identifiers do
        case resolve(state, id) do
          {:ok, name} -> {id, name}
          error -> {id, error}
        end
      end

    case Enum.find(names, &match?({_, {:error, _}}, &1)) do
      {_id, error} ->
        translate(error)

      nil ->
        with {:ok, pid} <- Watcher.start(state.session_id, names, watcher_fn, opts) do
          ref = make_ref()
          {:ok, {ref, %{state | watchers: Map.put(state.watchers, ref, pid)}}}
        end
    end
  end

  def watch_variables(_state, identifiers, watcher_fn, opts),
    do: {:error, {:invalid_option, {:watch, {identifiers, watcher_fn, opts}}}}

  @spec unwatch_variables(t(), reference()) :: {:ok, t()} | error()
  def unwatch_variables(state, _) when not is_struct(state, __MODULE__), do: invalid_state(state)

  def unwatch_variables(%__MODULE__{} = state, ref) do
    case Map.pop(state.watchers, ref) do
      {nil, _} ->
        {:ok, state}

      {pid, watchers} ->
        Watcher.stop(pid)
        {:ok, %{state | watchers: watchers}}
    end
  end

  # ---------------------------------------------------------------------------------------

  # A name (atom or string) or id (text) to the name the variable was registered under. A
  # session held by another node (HAManager routes the call there) is asked by the exact name.
  defp resolve(state, identifier) when is_atom(identifier) or is_binary(identifier) do
    if :ets.member(Tables.sessions(), state.session_id),
      do: resolve_local(state, identifier),
      else: {:ok, identifier}
  end

  defp resolve(_state, identifier), do: {:error, {:invalid_name, identifier}}

  defp resolve_local(state, identifier) do
    candidates = Options.spellings(identifier)

    case Enum.find(candidates, &:ets.member(Tables.variables(), {state.session_id, &1})) do
      nil -> {:error, :not_found}
      name -> {:ok, name}
    end
  end

  defp id_of(name) when is_atom(name), do: Atom.to_string(name)
  defp id_of(name), do: name

  defp export_variable(%Variable{} = v) do
    %{
      id: id_of(v.name),
      name: v.name,
      type: v.type,
      value: v.value,
      constraints: v.constraints,
      metadata: v.metadata,
      description: v.description,
      version: v.version,
      created_at: v.created_at,
      last_updated_at: v.updated_at
    }
  end

  defp invalid_state(state), do: {:error, {:invalid_state, state}}

  defp translate({:error, reason}), do: {:error, translate_reason(reason)}

  defp translate_reason({:variable_not_found, _}), do: :not_found
  defp translate_reason(:session_not_found), do: :session_expired
  defp translate_reason(reason), do: reason
end
