defmodule DSPex.Bridge.DependencyManager do
  @moduledoc """
  Variable dependency graphs that refuse cycles, and reactive recompute.

  Each session has a DAG over its variables, kept in the Rust core
  (`dspex_core::graph`) in an always-valid topological order that is updated incrementally
  on every insert. `add_dependency(session, from, to)` adds the edge `from -> to`: **`to`
  depends on `from`**, so a change of `from` flows to `to`.

  ## Example

      iex> alias DSPex.Bridge.{DependencyManager, SessionStore}
      iex> {:ok, s} = SessionStore.create_session("deps_doc")
      iex> for v <- [:a, :b, :c], do: {:ok, _} = SessionStore.register_variable(s, v, :integer, 1)
      iex> DependencyManager.add_dependency(s, :a, :b)
      :ok
      iex> DependencyManager.add_dependency(s, :b, :c)
      :ok
      iex> DependencyManager.add_dependency(s, :c, :a)
      {:error, :would_create_cycle}
      iex> DependencyManager.cycle_path(s, :c, :a)
      {:ok, [:a, :b, :c, :a]}
      iex> DependencyManager.get_update_order(s, :a)
      {:ok, [:a, :b, :c]}
      iex> SessionStore.delete_session(s)
      :ok

  ## Computed variables

  `define_computed/4` (or `SessionStore.register_variable/5` with `compute:`) makes a
  variable a function of others. After every committed write, the session recomputes what
  lies downstream, in topological order:

  * each affected variable **once per change**, after all of its inputs (a diamond
    `a -> b, c -> d` recomputes `d` once, after `b` and `c`);
  * **early cutoff**: a recompute that yields the old value stops there;
  * **failure isolation**: a compute function that raises (or returns a value its type
    refuses) leaves its variable's last value in place, marks it `stale:
    {:compute_failed, reason}`, marks the computed variables fed by it
    `stale: {:upstream_failed, name}`, and emits `propagation_failed`; independent branches
    still recompute, and nothing already committed is rolled back;
  * **batching**: `SessionStore.update_variables/3` propagates once over the union of the
    changes;
  * sessions created with `propagation: :async` return from writes at once;
    `SessionStore.await_propagation/2` waits for the recompute.

  Compute functions run in the session's process, serialized with its writes: keep them
  short, or do the heavy work elsewhere and write the result.

  ## Events

  `[:dspex, :bridge, :dependency, event]` with `event` one of `:added`, `:removed`,
  `:cycle_detected` (metadata `path`), `:propagation_started` (`affected_count`),
  `:propagation_completed` (`duration_us`, `updated_count`), `:propagation_failed`
  (`name`, `reason`).

  ## Errors

  `{:error, reason}` with `:session_not_found`, `{:invalid_session_id, t}`,
  `{:invalid_name, t}`, `{:variable_not_found, name}`, `{:invalid_type, t}` (edge kinds are
  `:data`, `:compute`, `:constraint` or a string label), `:would_create_cycle`,
  `:dependency_not_found`, `{:compute_input, var, input}` (the edge belongs to a compute
  declaration; redefine the computation instead), `{:invalid_option, detail}`,
  `:access_denied`, `{:too_many, n, limit}`. The graph is unchanged when a call fails.
  """

  alias DSPex.Bridge.{Events, Native, Options, SessionStore, Variable}
  import DSPex.Bridge.Options, only: [is_id: 1]
  import DSPex.Bridge.HAManager.Routed, only: [defrouted: 1]

  @type session_id :: Variable.id()
  @type name :: Variable.id()
  @type kind :: :data | :compute | :constraint | String.t()

  @kinds [:data, :compute, :constraint]
  @max_batch 1_000_000

  @doc """
  Adds `from -> to` (`to` depends on `from`). Refuses an edge that would close a cycle,
  including `a -> a`, emitting `cycle_detected` with the path `[to, ..., from, to]`.
  Adding an existing edge again changes only its kind.
  """
  @spec add_dependency(session_id(), name(), name(), kind(), keyword()) ::
          :ok | {:error, term()}
  def add_dependency(session_id, from_var, to_var, type \\ :data, opts \\ [])

  # The owner's call (no options): one NIF call finds the session's graph and adds the edge.
  # The NIF checks the arguments (it refuses whatever `add_checked/5` would), so the ids
  # are not read here first: on a large caller heap each read can be a cache miss, and the
  # NIF asks for both ids' data at once.
  def add_dependency(session_id, from_var, to_var, type, []) do
    # The NIF knows whether events are listened to: `:added` asks for the event.
    case Native.graph_add_edge_in(session_id, from_var, to_var, type) do
      :ok ->
        :ok

      :added ->
        emit_added(session_id, from_var, to_var, type)

      :routed ->
        add_through_session(session_id, from_var, to_var, type, [])

      error ->
        error
        |> add_failed(session_id, from_var, to_var)
        |> routed(session_id, :add_dependency, [session_id, from_var, to_var, type, []])
    end
  rescue
    # The checked path says why.
    ArgumentError -> add_checked(session_id, from_var, to_var, type, [])
  end

  def add_dependency(session_id, from_var, to_var, type, opts),
    do:
      routed(
        add_checked(session_id, from_var, to_var, type, opts),
        session_id,
        :add_dependency,
        [session_id, from_var, to_var, type, opts]
      )

  defp add_checked(session_id, from_var, to_var, type, opts) do
    with :ok <- check_pair(from_var, to_var),
         :ok <- check_kind(type),
         {:ok, graph} <- SessionStore.session_graph(session_id, opts, :write) do
      case Native.graph_add_edge_direct(graph, from_var, to_var, type) do
        {:ok, _new?} -> added(session_id, from_var, to_var, type)
        :routed -> add_through_session(session_id, from_var, to_var, type, opts)
        error -> add_failed(error, session_id, from_var, to_var)
      end
    end
  rescue
    # Atom ids outside Latin-1 cannot cross the NIF boundary on OTP 25 (NIF API 2.16).
    ArgumentError -> {:error, :invalid_name}
  end

  # A session under HA takes its edges through its process, so that they are ordered with
  # its other writes and reach its replicas.
  defp add_through_session(session_id, from_var, to_var, type, opts) do
    with :ok <- check_pair(from_var, to_var),
         :ok <- check_kind(type) do
      case SessionStore.session_call(
             session_id,
             {:add_dependency, from_var, to_var, type},
             opts,
             :write
           ) do
        :ok -> added(session_id, from_var, to_var, type)
        error -> add_failed(error, session_id, from_var, to_var)
      end
    end
  end

  defp added(session_id, from_var, to_var, type) do
    if Events.enabled?(), do: emit_added(session_id, from_var, to_var, type), else: :ok
  end

  defp emit_added(session_id, from_var, to_var, type),
    do: emit(:added, session_id, %{from: from_var, to: to_var, type: type})

  defp add_failed({:error, {:cycle, path}}, session_id, from_var, to_var) do
    emit(:cycle_detected, session_id, %{from: from_var, to: to_var, path: path})
    {:error, :would_create_cycle}
  end

  defp add_failed(error, _session_id, _from_var, _to_var), do: unknown_to_not_found(error)

  @doc """
  Adds many `{from, to}` or `{from, to, kind}` edges, all or nothing, in one pass. On a
  cycle, nothing is added: `{:error, :would_create_cycle}`, as for one edge; the
  `[:dspex, :bridge, :dependency, :cycle_detected]` event names the first offending edge
  and its path (and `cycle_path/4` finds a path for any edge).
  """
  @spec add_dependencies(session_id(), [tuple()], keyword()) ::
          {:ok, non_neg_integer()} | {:error, term()}
  def add_dependencies(session_id, edges, opts \\ [])

  def add_dependencies(session_id, edges, opts)
      when is_list(edges) and length(edges) <= @max_batch do
    routed(add_batch(session_id, edges, opts), session_id, :add_dependencies, [
      session_id,
      edges,
      opts
    ])
  end

  def add_dependencies(_session_id, edges, _opts) when is_list(edges) do
    if Options.proper_list?(edges),
      do: {:error, {:too_many, length(edges), @max_batch}},
      else: {:error, {:invalid_option, {:edges, edges}}}
  end

  def add_dependencies(_session_id, other, _opts), do: {:error, {:invalid_option, {:edges, other}}}

  defp add_batch(session_id, edges, opts) do
    # The NIF checks every entry as it reads it (the first malformed one is the error).
    with {:ok, graph} <- SessionStore.session_graph(session_id, opts, :write) do
      case Native.graph_add_edges_direct(graph, edges) do
        :routed ->
          session_id
          |> SessionStore.session_call({:add_dependencies, edges}, opts, :write)
          |> batch_result(session_id)

        result ->
          batch_result(result, session_id)
      end
    end
  rescue
    # Atom ids outside Latin-1 cannot cross the NIF boundary on OTP 25 (NIF API 2.16).
    ArgumentError -> {:error, :invalid_name}
  end

  defp batch_result({:ok, added}, session_id) do
    emit(:added, session_id, %{count: added})
    {:ok, added}
  end

  defp batch_result({:error, {:cycle, [to | _] = path}}, session_id) do
    from = Enum.at(path, -2)
    emit(:cycle_detected, session_id, %{from: from, to: to, path: path})
    {:error, :would_create_cycle}
  end

  defp batch_result(error, _session_id), do: unknown_to_not_found(error)

  @doc """
  The cycle `[to, ..., from, to]` that adding `from -> to` would close:
  `{:ok, path}`, or `{:error, :no_cycle}` when the edge would be accepted.
  """
  @spec cycle_path(session_id(), name(), name(), keyword()) :: {:ok, [name()]} | {:error, term()}
  defrouted cycle_path(session_id, from_var, to_var, opts \\ [])

  defp local_cycle_path(session_id, from_var, to_var, opts) do
    with :ok <- check_names([from_var, to_var]),
         {:ok, graph} <- SessionStore.session_graph(session_id, opts, :read) do
      cond do
        from_var == to_var and known?(graph, from_var) -> {:ok, [to_var, to_var]}
        true -> graph |> Native.graph_cycle_path(from_var, to_var) |> cycle_result()
      end
    end
  rescue
    # Atom ids outside Latin-1 cannot cross the NIF boundary on OTP 25 (NIF API 2.16).
    ArgumentError -> {:error, :invalid_name}
  end

  defp known?(graph, name), do: match?({:ok, _}, Native.graph_neighbours(graph, name, :dependents))

  defp cycle_result({:ok, nil}), do: {:error, :no_cycle}
  defp cycle_result({:ok, path}), do: {:ok, path}
  defp cycle_result(error), do: unknown_to_not_found(error)

  @doc """
  `{:ok, [changed_var | downstream]}`: the changed variable, then everything that depends on
  it directly or transitively, in an order where every variable comes after all of its
  dependencies. Pass a list to get the union for several changes, each variable once.
  """
  @spec get_update_order(session_id(), name() | [name()], keyword()) ::
          {:ok, [name()]} | {:error, term()}
  defrouted get_update_order(session_id, changed, opts \\ [])

  defp local_get_update_order(session_id, changed, opts) do
    changed_list = List.wrap(changed)

    with :ok <- check_names(changed_list),
         {:ok, graph} <- SessionStore.session_graph(session_id, opts, :read) do
      graph |> Native.graph_update_order(changed_list) |> unknown_to_not_found()
    end
  rescue
    # Atom ids outside Latin-1 cannot cross the NIF boundary on OTP 25 (NIF API 2.16).
    ArgumentError -> {:error, :invalid_name}
  end

  @doc "The variables `var` depends on directly."
  @spec get_dependencies(session_id(), name(), keyword()) :: {:ok, [name()]} | {:error, term()}
  def get_dependencies(session_id, var, opts \\ []),
    do: neighbours(session_id, var, :dependencies, opts)

  @doc "The variables that depend on `var` directly."
  @spec get_dependents(session_id(), name(), keyword()) :: {:ok, [name()]} | {:error, term()}
  def get_dependents(session_id, var, opts \\ []),
    do: neighbours(session_id, var, :dependents, opts)

  @doc "Every variable `var` depends on, directly or not, in topological order."
  @spec get_upstream(session_id(), name(), keyword()) :: {:ok, [name()]} | {:error, term()}
  def get_upstream(session_id, var, opts \\ []), do: neighbours(session_id, var, :upstream, opts)

  @doc "Every variable depending on `var`, directly or not, in topological order."
  @spec get_downstream(session_id(), name(), keyword()) :: {:ok, [name()]} | {:error, term()}
  def get_downstream(session_id, var, opts \\ []),
    do: neighbours(session_id, var, :downstream, opts)

  @funs %{
    dependencies: :get_dependencies,
    dependents: :get_dependents,
    upstream: :get_upstream,
    downstream: :get_downstream
  }

  defp neighbours(session_id, var, which, opts),
    do:
      routed(local_neighbours(session_id, var, which, opts), session_id, @funs[which], [
        session_id,
        var,
        opts
      ])

  defp local_neighbours(session_id, var, which, opts) do
    with :ok <- check_names([var]),
         {:ok, graph} <- SessionStore.session_graph(session_id, opts, :read) do
      graph |> Native.graph_neighbours(var, which) |> unknown_to_not_found()
    end
  rescue
    # Atom ids outside Latin-1 cannot cross the NIF boundary on OTP 25 (NIF API 2.16).
    ArgumentError -> {:error, :invalid_name}
  end

  @doc """
  Removes `from -> to`. Edges that a computed variable's declaration created are refused
  with `{:error, {:compute_input, to, from}}`.
  """
  @spec remove_dependency(session_id(), name(), name(), keyword()) :: :ok | {:error, term()}
  defrouted remove_dependency(session_id, from_var, to_var, opts \\ [])

  defp local_remove_dependency(session_id, from_var, to_var, opts) do
    with :ok <- check_names([from_var, to_var]),
         :ok <-
           SessionStore.session_call(
             session_id,
             {:remove_dependency, from_var, to_var},
             opts,
             :write
           ) do
      emit(:removed, session_id, %{from: from_var, to: to_var})
    end
  end

  @doc "Removes every edge into and out of `var` (not those of compute declarations)."
  @spec clear_dependencies(session_id(), name(), keyword()) :: :ok | {:error, term()}
  defrouted clear_dependencies(session_id, var, opts \\ [])

  defp local_clear_dependencies(session_id, var, opts) do
    with :ok <- check_names([var]),
         :ok <- SessionStore.session_call(session_id, {:clear_dependencies, var}, opts, :write) do
      emit(:removed, session_id, %{variable: var})
    end
  end

  @doc """
  Makes the existing variable `name` computed from `inputs` by `fun` (a function of a map of
  input name to value, or a `{module, function}` / `{module, function, extra_args}`
  reference, see `DSPex.Bridge.Compute`). The value is computed at once and after every
  change of an input.
  """
  @spec define_computed(session_id(), name(), DSPex.Bridge.Compute.t(), [name()], keyword()) ::
          {:ok, Variable.t()} | {:error, term()}
  def define_computed(session_id, name, fun, inputs, opts \\ [])

  def define_computed(session_id, name, fun, inputs, opts) when is_list(inputs),
    do:
      routed(
        local_define_computed(session_id, name, fun, inputs, opts),
        session_id,
        :define_computed,
        [session_id, name, fun, inputs, opts]
      )

  def define_computed(_session_id, _name, fun, inputs, _opts),
    do: {:error, {:invalid_compute, {fun, inputs}}}

  defp local_define_computed(session_id, name, fun, inputs, opts) do
    case DSPex.Bridge.Compute.check(fun) do
      {:ok, fun} ->
        with :ok <- check_names([name | inputs]) do
          SessionStore.session_call(
            session_id,
            {:define_computed, name, {fun, inputs}},
            opts,
            :write
          )
        end

      {:error, _} ->
        {:error, {:invalid_compute, {fun, inputs}}}
    end
  end

  @doc "The graph in Graphviz DOT format: `{:ok, text}`. Atom ids read `:name`, strings `\"name\"`."
  @spec visualize_graph(session_id(), keyword()) :: {:ok, String.t()} | {:error, term()}
  def visualize_graph(session_id, opts \\ []) do
    result =
      with {:ok, graph} <- SessionStore.session_graph(session_id, opts, :read) do
        {:ok, Native.graph_to_dot(graph)}
      end

    routed(result, session_id, :visualize_graph, [session_id, opts])
  end

  @doc "`{:ok, %{variables: n, dependencies: m}}` for a session's graph."
  @spec graph_size(session_id(), keyword()) :: {:ok, map()} | {:error, term()}
  def graph_size(session_id, opts \\ []) do
    result =
      with {:ok, graph} <- SessionStore.session_graph(session_id, opts, :read) do
        {nodes, edges} = Native.graph_size(graph)
        {:ok, %{variables: nodes, dependencies: edges}}
      end

    routed(result, session_id, :graph_size, [session_id, opts])
  end

  # A session this node does not hold is asked of its owner (see HAManager).
  defp routed(result, session_id, fun, args),
    do: DSPex.Bridge.HAManager.Router.routed(result, __MODULE__, session_id, fun, args)

  defp check_pair(a, b) when is_id(a) and is_id(b), do: :ok
  defp check_pair(a, b), do: check_names([a, b])

  defp check_names(names) do
    if Options.proper_list?(names) do
      case Enum.reject(names, &is_id/1) do
        [] -> :ok
        [bad | _] -> {:error, {:invalid_name, bad}}
      end
    else
      {:error, {:invalid_name, names}}
    end
  end

  defp check_kind(kind) when kind in @kinds, do: :ok

  defp check_kind(kind) when is_binary(kind),
    do: if(String.valid?(kind), do: :ok, else: {:error, {:invalid_type, kind}})

  defp check_kind(kind), do: {:error, {:invalid_type, kind}}

  defp unknown_to_not_found({:error, {:unknown_variable, name}}),
    do: {:error, {:variable_not_found, name}}

  defp unknown_to_not_found(other), do: other

  defp emit(event, session_id, metadata) do
    Events.emit(
      [:dspex, :bridge, :dependency, event],
      %{},
      Map.put(metadata, :session_id, session_id)
    )
  end
end
