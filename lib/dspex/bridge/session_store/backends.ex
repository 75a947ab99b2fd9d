defmodule DSPex.Bridge.SessionStore.Backends do
  @moduledoc false
  # Which backend holds a session, and the calls of SessionStore's public API on a session
  # that lives on Redis.
  #
  # A session is found in this order: this node's own sessions (the `:local` backend, ETS
  # and the NIF), the node that owns it under HAManager, then the Redis backend when one
  # runs here. Only a call that this node could not answer goes further, so local sessions
  # pay nothing for the seam. The arguments reach here already checked by SessionStore.

  alias DSPex.Bridge.{AccessControl, DependencyManager, SessionStore}
  alias DSPex.Bridge.SessionStore.RedisBackend.{Access, Graph, ReadCache}
  import DSPex.Bridge.Options, only: [is_id: 1]
  alias DSPex.Bridge.SessionStore.RedisBackend

  @doc false
  # The default backend of new sessions: `config :dspex_bridge, backend: :local | {:redis, opts}`.
  def default do
    case Application.get_env(:dspex_bridge, :backend, :local) do
      {:redis, _opts} -> :redis
      other -> other
    end
  end

  @doc false
  # The child that starts the configured Redis backend with the application, if any.
  def children do
    case Application.get_env(:dspex_bridge, :backend, :local) do
      {:redis, opts} -> [{RedisBackend, opts}]
      _ -> []
    end
  end

  @doc false
  # The module of a backend's name (see DSPex.Bridge.SessionStore.Backend).
  def module(:local), do: DSPex.Bridge.SessionStore.LocalBackend
  def module(:redis), do: RedisBackend

  @doc false
  def check_backend(backend) when backend in [:local, :redis], do: :ok
  def check_backend(backend), do: {:error, {:invalid_option, {:backend, backend}}}

  @doc false
  def redis, do: RedisBackend.running()

  @doc false
  # `{:ok, true}` when a session `id` lives on the Redis backend, `{:ok, false}` when not
  # (or none runs here), or the error that kept it from knowing: a caller must then fail,
  # not fall back to this node.
  def on_redis(id, cached \\ false) do
    case RedisBackend.lookup() do
      nil -> {:ok, false}
      backend -> RedisBackend.located(backend, id, cached)
    end
  end

  @doc false
  # The owner's read of a variable this node's Redis read cache holds: `{:ok, var}` or
  # `:miss`. Only sessions found on Redis through `route/4` have copies, so this comes
  # after this node's own sessions and before the HA lookup without changing the answer.
  def cached_variable(id, name) do
    case :persistent_term.get(RedisBackend, nil) do
      nil -> :miss
      backend -> ReadCache.fetch(backend.cache, id, name)
    end
  rescue
    # The backend died, and its table with it.
    ArgumentError -> :miss
  end

  @doc false
  # The same for a session that is not this node's own, remembered once found.
  def redis_session(id) do
    if :ets.member(SessionStore.Tables.sessions(), id), do: {:ok, false}, else: on_redis(id, true)
  end

  @doc false
  # The first of `names` that is a variable of the Redis session `id` (nil when none is, or
  # no Redis backend runs): how Python's text finds a variable an atom names.
  def existing_name(id, names) do
    with backend when backend != nil <- RedisBackend.lookup(),
         {:ok, rows} <- RedisBackend.read_with_policies(backend, id, names) do
      Enum.find_value(rows, fn {name, found, _policy} -> match?({:ok, _}, found) && name end)
    else
      _ -> nil
    end
  end

  @doc false
  def list_sessions, do: RedisBackend.list_sessions()

  @doc false
  # `error` is this node's answer (`:session_not_found` or `:access_denied`); it stands
  # unless the Redis backend holds the session.
  def route(module, fun, [first | _] = args, error) do
    with id when id != nil <- session_of(module, first),
         backend when backend != nil <- RedisBackend.lookup() do
      case call(backend, module, fun, args) do
        {:error, :session_not_found} -> error
        result -> result
      end
    else
      nil -> error
    end
  end

  def route(_module, _fun, _args, error), do: error

  # The session a call is about: its first argument, or for AccessControl the first half of
  # the `{session, name}` that names a variable.
  defp session_of(AccessControl, {id, name}) when is_id(id) and is_id(name), do: id
  defp session_of(AccessControl, _other), do: nil
  defp session_of(_module, id) when is_id(id), do: id
  defp session_of(_module, _other), do: nil

  defp call(backend, SessionStore, fun, args) do
    [id | _] = args

    if owner?(id, List.last(args)),
      do: session_call(backend, fun, args),
      else: foreign_call(backend, fun, args)
  end

  defp call(backend, AccessControl, fun, [{id, _name} | _] = args),
    do: if_exists(backend, id, fn -> access_call(backend, fun, args) end)

  defp call(backend, DependencyManager, fun, args) do
    [id | _] = args

    if owner?(id, List.last(args)),
      do: graph_call(backend, fun, args),
      else: denied_or_missing(backend, id)
  end

  # Other session-scoped modules: not on Redis yet.
  defp call(backend, module, _fun, [id | _]), do: unsupported(backend, id, module)

  # Another session's calls: decided by each variable's policy, read with it.
  defp foreign_call(b, :get_variable, [id, name, opts]),
    do: if_exists(b, id, fn -> Access.get_variable(b, id, name, caller(opts), context(opts)) end)

  defp foreign_call(b, :list_variables, [id, opts]),
    do: if_exists(b, id, fn -> Access.list_variables(b, id, caller(opts), context(opts)) end)

  defp foreign_call(b, :get_history, [id, name, opts]),
    do: if_exists(b, id, fn -> Access.get_history(b, id, name, caller(opts), context(opts)) end)

  defp foreign_call(b, :update_variable, [id, name, value, opts]) do
    o = update_opts(name, opts)

    if_exists(b, id, fn ->
      case Access.update_variables(b, id, [{name, value}], o, caller(opts), context(opts)) do
        {:ok, [var]} -> {:ok, var}
        error -> error
      end
    end)
  end

  defp foreign_call(b, :update_variables, [id, updates, opts]) do
    if_exists(b, id, fn ->
      Access.update_variables(
        b,
        id,
        Enum.to_list(updates),
        Map.new(opts),
        caller(opts),
        context(opts)
      )
    end)
  end

  # Session-wide operations, and what Redis sessions do not decide yet, are the owner's.
  defp foreign_call(b, _fun, [id | _]), do: denied_or_missing(b, id)

  defp caller(opts), do: Keyword.fetch!(opts, :caller)
  defp context(opts), do: Keyword.get(opts, :context, %{})

  defp update_opts(name, opts) do
    o = Map.new(opts)
    expected = if v = o[:expected_version], do: %{name => v}, else: %{}
    tokens = if t = o[:lock_token], do: %{name => t}, else: %{}
    Map.merge(o, %{expected_versions: expected, lock_tokens: tokens})
  end

  defp access_call(b, :check_permission, [{id, name}, caller, permission, context]) do
    if caller == id, do: :ok, else: Access.check(b, id, name, caller, permission, context)
  end

  defp access_call(b, fun, [{id, name} | rest])
       when fun in [:get_policy, :set_access_mode, :add_rule, :remove_rule] do
    opts = List.last(rest)

    if owner?(id, opts),
      do: policy_call(b, fun, id, name, rest),
      else: {:error, :access_denied}
  end

  defp access_call(_b, fun, _args), do: {:error, {:not_supported, {AccessControl, fun}}}

  defp policy_call(b, :get_policy, id, name, _rest), do: Access.get_policy(b, id, name)

  defp policy_call(b, :set_access_mode, id, name, [mode, _]),
    do: Access.change(b, id, name, {:set_mode, mode})

  defp policy_call(b, :add_rule, id, name, [rule, _]) do
    with {:ok, [canonical]} <- AccessControl.normalize_rules([rule]),
         do: Access.change(b, id, name, {:add_rule, canonical})
  end

  defp policy_call(b, :remove_rule, id, name, [rule_id, _]),
    do: Access.change(b, id, name, {:remove_rule, to_string(rule_id)})

  defp graph_call(b, :add_dependency, [id, from, to, kind, _opts]) do
    case Graph.add(b, id, [{from, to, kind}]) do
      {:ok, _} -> :ok
      {:error, {:cycle, _path}} -> {:error, :would_create_cycle}
      error -> error
    end
  end

  defp graph_call(b, :add_dependencies, [id, edges, _opts]) do
    case Graph.add(b, id, edges) do
      {:error, {:cycle, _path}} -> {:error, :would_create_cycle}
      result -> result
    end
  end

  defp graph_call(b, :remove_dependency, [id, from, to, _opts]),
    do: Graph.remove(b, id, from, to)

  defp graph_call(b, :clear_dependencies, [id, var, _opts]), do: Graph.clear(b, id, var)

  defp graph_call(b, :get_dependencies, [id, var, _]),
    do: Graph.neighbours(b, id, var, :dependencies)

  defp graph_call(b, :get_dependents, [id, var, _]), do: Graph.neighbours(b, id, var, :dependents)
  defp graph_call(b, :get_upstream, [id, var, _]), do: Graph.neighbours(b, id, var, :upstream)
  defp graph_call(b, :get_downstream, [id, var, _]), do: Graph.neighbours(b, id, var, :downstream)

  defp graph_call(b, :get_update_order, [id, changed, _]),
    do: Graph.update_order(b, id, List.wrap(changed))

  defp graph_call(b, :cycle_path, [id, from, to, _]), do: Graph.cycle_path(b, id, from, to)
  defp graph_call(b, fun, [id | _]), do: unsupported(b, id, {DependencyManager, fun})

  # Every variable of a Redis session is private: another session's caller is denied, and
  # learns nothing (a missing session looks the same).
  defp owner?(id, opts) when is_list(opts), do: Keyword.get(opts, :caller, id) == id
  defp owner?(_id, _not_opts), do: true

  defp denied_or_missing(backend, id),
    do: if_exists(backend, id, fn -> {:error, :access_denied} end)

  defp unsupported(backend, id, what),
    do: if_exists(backend, id, fn -> {:error, {:not_supported, what}} end)

  defp if_exists(backend, id, fun) do
    case RedisBackend.located(backend, id) do
      {:ok, true} -> fun.()
      {:ok, false} -> {:error, :session_not_found}
      error -> error
    end
  end

  # The owner's calls: through the Backend behaviour.
  defp session_call(_b, :delete_session, [id, _opts]), do: RedisBackend.delete_session(id)
  defp session_call(_b, :get_session, [id, _opts]), do: RedisBackend.get_session(id)
  defp session_call(_b, :get_variable, [id, name, _]), do: RedisBackend.get_variable(id, name)
  defp session_call(_b, :list_variables, [id, _opts]), do: RedisBackend.list_variables(id)
  defp session_call(_b, :get_history, [id, name, _]), do: RedisBackend.get_history(id, name)

  defp session_call(_b, :delete_variable, [id, name, _]),
    do: RedisBackend.delete_variable(id, name)

  defp session_call(_b, :rollback_variable, [id, name, version, _]),
    do: RedisBackend.rollback_variable(id, name, version)

  defp session_call(_b, :register_variable, [id, name, type, value, opts]),
    do: RedisBackend.register_variable(id, name, type, value, Map.new(opts))

  defp session_call(_b, :update_variable, [id, name, value, opts]) do
    case RedisBackend.update_variables(id, [{name, value}], update_opts(name, opts)) do
      {:ok, [var]} -> {:ok, var}
      error -> error
    end
  end

  defp session_call(_b, :update_variables, [id, updates, opts]),
    do: RedisBackend.update_variables(id, Enum.to_list(updates), Map.new(opts))

  defp session_call(_b, :watch, [id, name, opts]),
    do: RedisBackend.watch(id, name, Keyword.get(opts, :pid, self()))

  defp session_call(b, :unwatch, [id, name, opts]),
    do: if_exists(b, id, fn -> RedisBackend.unwatch(id, name, Keyword.get(opts, :pid, self())) end)

  defp session_call(_b, :export_session, [id, _opts]), do: RedisBackend.export_session(id)

  # No propagation runs on Redis sessions: there is nothing to wait for.
  defp session_call(b, :await_propagation, [id, _opts]), do: if_exists(b, id, fn -> :ok end)

  defp session_call(b, fun, [id | _]), do: unsupported(b, id, fun)
end
