defmodule DSPex.Bridge.SessionStore.Session do
  @moduledoc false
  # One process per session. It exists to serialize that session's writes (so version checks
  # and history are race-free without a global lock), to own its idle timer and to monitor
  # its watchers. Reads never come here: they are ETS lookups in the caller.
  #
  # A temporary child: if it crashes, SessionStore.Keeper starts it again over its rows (or
  # removes the session whole), so crashes never count against the supervisor. A call that
  # raises is answered with {:error, {:internal_error, message}} instead of a crash.
  use GenServer, restart: :temporary
  require Logger

  alias DSPex.Bridge.{Events, Native, Variable, VariableType}
  alias DSPex.Bridge.HAManager.Replication
  alias DSPex.Bridge.DependencyManager.Propagation
  alias DSPex.Bridge.SessionStore.{Codec, Keeper, SessionHA, Tables, Watchers}

  @enforce_keys [:id, :meta, :touch]
  defstruct [
    :id,
    :meta,
    :touch,
    :last_activity,
    :timer,
    :ha,
    :forward_to,
    held: [],
    count: 0,
    watchers: %{},
    monitors: %{}
  ]

  def start_link(args), do: GenServer.start_link(__MODULE__, args)

  def child_spec({id, _meta, _init} = args) do
    %{id: {__MODULE__, id}, start: {__MODULE__, :start_link, [args]}, restart: :temporary}
  end

  # ---------------------------------------------------------------------------------------
  # init: claim the id atomically; after a crash, take the existing row over.

  @impl true
  # Started again by the Keeper after a crash: take the rows over (a session deleted in the
  # meantime stays gone).
  def init({id, _meta, :restart}), do: take_over(id, :normal)

  def init({id, meta, init}) do
    touch = :atomics.new(1, signed: false)
    # A session that comes from another node (a migration, a promoted replica) brings the
    # watchers it had there.
    {watchers, meta} = Map.pop(meta, :watchers, [])

    if :ets.insert_new(Tables.sessions(), {id, meta, self(), touch}) do
      Keeper.watch(id, self())
      :ok = Native.graph_publish(id, meta.core)
      state = schedule_idle_check(new_state(id, meta, touch))
      state = Enum.reduce(watchers, state, fn {name, pid}, st -> Watchers.add(st, name, pid) end)

      case init do
        :empty -> {:ok, state}
        :awaiting_load -> {:ok, state, {:continue, :await_load}}
      end
    else
      take_over(id, :session_exists)
    end
  end

  # The row of a session whose process is gone is taken over, with its watchers and HA
  # registration (handle_continue(:recover)); a live owner keeps it.
  defp take_over(id, if_no_row) do
    case :ets.lookup(Tables.sessions(), id) do
      [{^id, meta, pid, touch}] when pid != self() ->
        if Process.alive?(pid) do
          {:stop, :session_exists}
        else
          :ets.update_element(Tables.sessions(), id, {3, self()})
          Keeper.watch(id, self())
          {:ok, schedule_idle_check(new_state(id, meta, touch)), {:continue, :recover}}
        end

      _ ->
        {:stop, if_no_row}
    end
  end

  defp new_state(id, meta, touch) do
    # The variable count is kept here so registering stays O(1); it is read from ETS only
    # when the process (re)starts.
    %__MODULE__{
      id: id,
      meta: meta,
      touch: touch,
      last_activity: now_ms(),
      count: count_variables(id)
    }
  end

  # The codec already checked the snapshot (and, but for the cluster-internal format, rebuilt
  # the graph); variables without a stored policy get the default private one. A format 3
  # snapshot is stored in parallel: the history and each half of the variables (with their
  # graph nodes and policies) by processes of their own.
  defp load(id, {:split, vbins, abin, edges}, {:split, hbin}, [], core) do
    history =
      Task.async(fn ->
        rows = for {name, h} <- Codec.history_from(hbin), do: {{id, name}, h}
        :ets.insert(Tables.history(), rows)
      end)

    cores =
      vbins
      |> Enum.map(fn vbin ->
        Task.async(fn ->
          variables = Codec.variables_from(vbin, id)
          load_rows(id, variables, Codec.access_from(abin))
          Codec.core_variables(variables)
        end)
      end)
      |> Task.await_many(:infinity)

    :ok = Native.session_load(core, Enum.concat(cores), edges)
    Task.await(history, :infinity)
    Enum.sum(Enum.map(cores, &length/1))
  end

  defp load(id, variables, histories, access, _core) do
    load_rows(id, variables, access)
    :ets.insert(Tables.history(), Enum.map(histories, fn {name, h} -> {{id, name}, h} end))
    length(variables)
  end

  defp load_rows(id, variables, access) do
    [{^id, _, _, touch}] = :ets.lookup(Tables.sessions(), id)
    policies = Map.new(access, fn {name, mode, rules} -> {name, {mode, rules}} end)

    access =
      for var <- variables do
        {mode, rules} = Map.get(policies, var.name, {:private, []})
        {var.name, mode, rules}
      end

    :ok = Native.acl_set_policies(id, access)
    :ets.insert(Tables.variables(), Enum.map(variables, &{{id, &1.name}, &1, touch}))
    :ok
  end

  # ---------------------------------------------------------------------------------------
  # calls: the HA path first (SessionHA: forwarding, held writes, replication), then the
  # session's own operations

  @impl true
  def handle_call(msg, from, state), do: SessionHA.call(msg, from, state)

  # A call that raises must not take the session (and its watchers) down: the caller gets
  # an error, the state is as before the call, and the count is re-read from the rows in
  # case the call got as far as writing some.
  @doc false
  def guarded(msg, from, state) do
    handle(msg, from, state)
  rescue
    e ->
      Logger.error(
        "dspex_bridge: session #{inspect(state.id)} could not handle #{inspect(tag(msg))}: " <>
          Exception.format(:error, e, __STACKTRACE__)
      )

      {:reply, {:error, {:internal_error, Exception.message(e)}},
       %{state | count: count_variables(state.id)}}
  end

  defp tag(msg) when is_tuple(msg), do: elem(msg, 0)
  defp tag(msg), do: msg

  # ---------------------------------------------------------------------------------------
  # writes

  defp handle({:register, name, type, value, opts}, _from, state) do
    key = {state.id, name}

    reply =
      with :ok <- absent(key, name),
           :ok <- below_limit(state),
           {:ok, constraints} <-
             VariableType.normalize_constraints(type, opts[:constraints] || %{}),
           {:ok, compute} <- check_compute(state, opts[:compute], name),
           var = new_variable(state, name, type, value, constraints, compute, opts),
           {:ok, stored} <- initial_value(state, var),
           :ok <- add_node(state, name, compute),
           :ok <- set_policy(state, name, opts) do
        var = %{var | value: stored}
        commit(state, [{nil, var, :register}])
        {:ok, var}
      end

    state = if match?({:ok, _}, reply), do: %{state | count: state.count + 1}, else: state
    {:reply, reply, active(state)}
  end

  defp handle({:define_computed, name, compute}, _from, state) do
    reply =
      with {:ok, current} <- fetch(state.id, name),
           {:ok, compute} <- check_compute(state, compute, name),
           var = %{current | compute: compute},
           {:ok, value} <- initial_value(state, var),
           {:ok, _} <- add_compute_edges(state, compute, name) do
        new = if value == current.value, do: var, else: bump(var, value, %{})
        commit(state, [{current, new, :compute}])
        {:ok, new}
      end

    {reply, state} = after_write(reply, [name], state)
    reply_and_maybe_propagate(reply, state)
  end

  defp handle({:acl, name, message}, _from, state) do
    reply =
      with {:ok, _var} <- fetch(state.id, name) do
        policy_change(state.id, name, message)
      end

    {:reply, reply, state}
  end

  # Edges of a session under HA (DependencyManager routes them here): the reply is the
  # graph's own, which DependencyManager turns into its errors and events.
  defp handle({:add_dependency, from, to, kind}, _from, state) do
    reply =
      case core(state, {:add_edges, [{from, to, kind}]}) do
        {:ok, _} -> :ok
        {:error, {:variable_not_found, name}} -> {:error, {:unknown_variable, name}}
        error -> error
      end

    {:reply, reply, state}
  end

  defp handle({:add_dependencies, edges}, _from, state),
    do: {:reply, Native.graph_add_edges(state.meta.core, edges), state}

  defp handle({:remove_dependency, from, to}, _from, state) do
    reply =
      case core(state, {:remove_edge, %{from: from, to: to}}) do
        {:ok, _} -> :ok
        error -> error
      end

    {:reply, reply, state}
  end

  defp handle({:clear_dependencies, name}, _from, state) do
    reply =
      case core(state, {:clear_edges, name}) do
        {:ok, _} -> :ok
        error -> error
      end

    {:reply, reply, state}
  end

  defp handle({:update, updates, opts}, _from, state) do
    reply =
      with {:ok, changes} <- prepare_updates(state, updates, opts) do
        commit(state, changes)
        {:ok, Enum.map(changes, fn {_old, new, _} -> new end)}
      end

    {reply, state} = after_write(reply, Enum.map(updates, &elem(&1, 0)), state)
    reply_and_maybe_propagate(reply, state)
  end

  defp handle({:rollback, name, version}, _from, state) do
    reply =
      with {:ok, current} <- fetch(state.id, name),
           {:ok, entry} <- history_entry(state.id, name, version),
           {:ok, stored} <- VariableType.validate(current.type, entry.value, current.constraints) do
        new = bump(current, stored, %{})
        commit(state, [{current, new, {:rollback, version}}])
        {:ok, new}
      end

    {reply, state} = after_write(reply, [name], state)
    reply_and_maybe_propagate(reply, state)
  end

  defp handle(:await_propagation, _from, state) do
    # Calls are handled in order, after any propagation a previous write queued.
    {:reply, :ok, state}
  end

  defp handle({:delete_variable, name}, _from, state) do
    with {:ok, _} <- core(state, {:delete, name}) do
      Native.acl_remove_policy(state.id, name)
      :ets.delete(Tables.variables(), {state.id, name})
      :ets.delete(Tables.history(), {state.id, name})
      {state, watchers} = Watchers.drop(state, name)
      for pid <- watchers, do: send(pid, {:dspex_variable_deleted, state.id, name})
      {:reply, :ok, active(%{state | count: state.count - 1})}
    else
      error -> {:reply, error, state}
    end
  end

  defp handle({:watch, name, pid}, _from, state) do
    case fetch(state.id, name) do
      {:ok, var} ->
        {:reply, {:ok, var}, Watchers.add(state, name, pid)}

      error ->
        {:reply, error, state}
    end
  end

  defp handle({:unwatch, name, pid}, _from, state) do
    {:reply, :ok, Watchers.remove(state, name, pid)}
  end

  # A lock granted or released on this session's variables: nothing to do here (the lock
  # table has it); the message exists to reach the replicas in order with the writes.
  defp handle({:lock_held, _var, _optimizer, _token, _until, _holder}, _from, state),
    do: {:reply, :ok, state}

  defp handle({:lock_released, _var, _optimizer}, _from, state), do: {:reply, :ok, state}

  defp handle(:export, _from, state), do: {:reply, export_terms(state), state}

  defp handle(:delete, _from, state) do
    Watchers.lose_all(state, :session_deleted)
    destroy(state)
    {:stop, :normal, :ok, state}
  end

  # What HA sends to another node (a migration, a replica's snapshot), watchers included:
  # they keep receiving changes from the new owner.
  @doc false
  def export(state) do
    meta = state.meta |> Map.delete(:core) |> Map.put(:watchers, Watchers.list(state))
    Codec.encode_split(state.id, meta, Native.graph_edges(state.meta.core))
  end

  defp export_terms(state) do
    vars = :ets.select(Tables.variables(), [{{{state.id, :_}, :"$1", :_}, [], [:"$1"]}])
    hist = :ets.select(Tables.history(), [{{{state.id, :"$1"}, :"$2"}, [], [{{:"$1", :"$2"}}]}])
    edges = Native.graph_edges(state.meta.core)

    access = Native.acl_session_policies(state.id)
    meta = state.meta |> Map.delete(:core) |> Map.put(:access, access)
    {:ok, meta, vars, hist, edges}
  end

  # An import's data comes as one message from the importing process (not through the
  # supervisor's child spec, which would copy it twice and keep it for the session's life).
  # No other message is handled before it: the session is not usable until it is loaded.
  @impl true
  def handle_continue(:await_load, state) do
    receive do
      {:dspex_load, from, ref, variables, histories, access, promotion} ->
        count = load(state.id, variables, histories, access, state.meta.core)
        state = %{state | count: count}

        case SessionHA.promote(promotion, state) do
          {:cont, state} ->
            send(from, {ref, :loaded})
            {:noreply, state}

          {:stop, state} ->
            send(from, {ref, :loaded})
            {:stop, :normal, state}
        end
    after
      30_000 ->
        destroy(state)
        {:stop, :normal, state}
    end
  end

  # After a crash: the watchers and the HA registration the rows kept.
  def handle_continue(:recover, state) do
    state = Watchers.restore(state)

    case :ets.lookup(Tables.keep(), state.id) do
      [{_, ha}] ->
        # The replicas get a full snapshot: a write the crash interrupted may be here only.
        case SessionHA.attach(state, ha) do
          {:ok, ha} -> {:noreply, %{state | ha: ha}}
          _error -> {:noreply, state}
        end

      [] ->
        {:noreply, state}
    end
  end

  def handle_continue({:propagate, changed}, state) do
    propagate(state, changed)
    {:noreply, state}
  end

  # ---------------------------------------------------------------------------------------
  # reactive propagation (DSPex.Bridge.DependencyManager.Propagation does the work)

  # After a successful write, :sync sessions propagate before replying; :async ones reply
  # first and propagate in handle_continue, before any other message.
  defp after_write({:ok, _} = reply, changed, state), do: {{reply, changed}, active(state)}
  defp after_write(error, _changed, state), do: {{error, []}, state}

  defp reply_and_maybe_propagate({reply, []}, state), do: {:reply, reply, state}

  defp reply_and_maybe_propagate({reply, changed}, %{meta: %{propagation: :async}} = state),
    do: {:reply, reply, state, {:continue, {:propagate, changed}}}

  defp reply_and_maybe_propagate({reply, changed}, state) do
    propagate(state, changed)
    {:reply, reply, state}
  end

  defp propagate(state, changed) do
    {graph_size, _} = Native.graph_size(state.meta.core)

    if graph_size > 1 do
      started = System.monotonic_time()
      result = Propagation.run(state.meta.core, changed, &fetch_or_nil(state.id, &1))

      if result.affected > 0 do
        meta = %{session_id: state.id, changed: changed}

        Events.emit(
          [:dspex, :bridge, :dependency, :propagation_started],
          %{affected_count: result.affected},
          meta
        )

        commit(state, result.changes)

        :ets.insert(
          Tables.variables(),
          Enum.map(result.marks, &{{state.id, &1.name}, &1, state.touch})
        )

        for {name, reason} <- result.failures do
          Events.emit(
            [:dspex, :bridge, :dependency, :propagation_failed],
            %{},
            Map.merge(meta, %{name: name, reason: reason})
          )
        end

        duration =
          System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)

        Events.emit(
          [:dspex, :bridge, :dependency, :propagation_completed],
          %{
            duration_us: duration,
            updated_count: length(result.changes),
            failed_count: length(result.failures)
          },
          meta
        )
      end
    end

    :ok
  end

  defp fetch_or_nil(id, name) do
    case fetch(id, name) do
      {:ok, var} -> var
      _ -> nil
    end
  end

  defp new_variable(state, name, type, value, constraints, compute, opts) do
    now = System.system_time(:millisecond)

    %Variable{
      session_id: state.id,
      name: name,
      type: type,
      value: value,
      version: 1,
      created_at: now,
      updated_at: now,
      constraints: constraints,
      metadata: opts[:metadata] || %{},
      description: opts[:description],
      compute: compute
    }
  end

  defp check_compute(_state, nil, _name), do: {:ok, nil}

  defp check_compute(state, {fun, inputs}, name) when is_list(inputs) do
    case DSPex.Bridge.Compute.check(fun) do
      {:ok, fun} -> check_inputs(state, fun, inputs, name)
      error -> error
    end
  end

  defp check_compute(_state, other, _name), do: {:error, {:invalid_compute, other}}

  defp check_inputs(state, fun, inputs, name) do
    # Enum.reject, not Enum.find: the offending input may itself be nil or false.
    cond do
      not DSPex.Bridge.Options.proper_list?(inputs) ->
        {:error, {:invalid_compute, {:inputs, inputs}}}

      inputs == [] ->
        {:error, {:invalid_compute, :no_inputs}}

      (bad = Enum.reject(inputs, &DSPex.Bridge.Options.id?/1)) != [] ->
        {:error, {:invalid_name, hd(bad)}}

      name in inputs ->
        {:error, :would_create_cycle}

      (missing = Enum.reject(inputs, &:ets.member(Tables.variables(), {state.id, &1}))) != [] ->
        {:error, {:variable_not_found, hd(missing)}}

      true ->
        {:ok, {fun, Enum.uniq(inputs)}}
    end
  end

  defp initial_value(_state, %Variable{compute: nil} = var),
    do: VariableType.validate(var.type, var.value, var.constraints)

  defp initial_value(state, %Variable{compute: {fun, inputs}} = var) do
    values = Map.new(inputs, fn input -> {input, elem(fetch(state.id, input), 1).value} end)
    Propagation.evaluate(fun, values, var)
  end

  defp add_node(state, name, compute) do
    case core(state, {:register, %{name: name, inputs: inputs_of(compute)}}) do
      {:ok, _} -> :ok
      error -> error
    end
  rescue
    ArgumentError -> {:error, {:invalid_name, name}}
  end

  defp add_compute_edges(state, compute, name) do
    case core(state, {:define_computed, %{name: name, inputs: inputs_of(compute)}}) do
      {:ok, _} -> {:ok, name}
      {:error, {:cycle, _path}} -> {:error, :would_create_cycle}
      error -> error
    end
  end

  defp inputs_of(nil), do: []
  defp inputs_of({_fun, inputs}), do: inputs

  # The session's core (dspex_core::session through the NIF) decides what it holds: which
  # variables exist with which versions, which are computed from which, the graph's edges.
  # Its refusals are this module's errors as they are.
  defp core(state, command) do
    case Native.session_apply(state.meta.core, command, core_clock()) do
      {:ok, _seq, reply} -> {:ok, reply}
      error -> error
    end
  end

  defp set_policy(state, name, opts) do
    mode = Map.get(opts, :access_mode, :private)
    rules = Map.get(opts, :access_rules, [])

    case Native.acl_set_policy(state.id, name, mode, rules) do
      :ok ->
        :ok

      error ->
        {:ok, :done} = core(state, {:delete, name})
        error
    end
  end

  # Policies are stored once, in the NIF's engine, with their rules as they were given.
  defp policy_change(id, name, :get_policy) do
    case Native.acl_policy(id, name) do
      {mode, rules} -> {:ok, %{mode: mode, rules: rules}}
      nil -> {:ok, %{mode: :private, rules: []}}
    end
  end

  defp policy_change(id, name, message) do
    case message do
      {:add_rule, rule} ->
        case Native.acl_add_rule(id, name, rule) do
          :ok -> :ok
          {:error, reason} -> {:error, {:invalid_rule, 0, reason}}
        end

      {:remove_rule, rule_id} ->
        Native.acl_remove_rule(id, name, rule_id)

      {:set_mode, new_mode} ->
        Native.acl_set_mode(id, name, new_mode)
    end
  end

  # ---------------------------------------------------------------------------------------
  # idle expiry: readers set the touch flag; the timer turns it into "active now".

  @impl true
  def handle_info(msg, state) do
    case SessionHA.info(msg, state) do
      :pass -> local_info(msg, state)
      result -> result
    end
  end

  defp local_info(:idle_check, state) do
    state = %{state | timer: nil}

    state =
      if :atomics.exchange(state.touch, 1, 0) == 1,
        do: %{state | last_activity: now_ms()},
        else: state

    idle_for = now_ms() - state.last_activity

    if state.meta.ttl != :infinity and idle_for >= state.meta.ttl do
      Watchers.lose_all(state, :session_expired)
      destroy(state)
      if state.ha, do: Replication.retire(state.id, state.ha)

      DSPex.Bridge.Events.emit(
        [:dspex, :bridge, :session, :expired],
        %{idle_ms: idle_for},
        %{session_id: state.id, ttl: state.meta.ttl}
      )

      {:stop, :normal, state}
    else
      {:noreply, schedule_idle_check(state)}
    end
  end

  defp local_info({:DOWN, ref, :process, _pid, reason}, state),
    do: {:noreply, Watchers.down(state, ref, reason)}

  defp local_info(_other, state), do: {:noreply, state}

  # The check runs every quarter TTL, so a session expires between ttl and 1.25 * ttl
  # after it was last used.
  defp schedule_idle_check(%{meta: %{ttl: :infinity}} = state), do: state

  defp schedule_idle_check(%{meta: %{ttl: ttl}} = state) do
    %{state | timer: Process.send_after(self(), :idle_check, max(div(ttl, 4), 1))}
  end

  defp active(state), do: %{state | last_activity: now_ms()}
  defp now_ms, do: System.monotonic_time(:millisecond)

  # The core's clock, which only stamps its log here: SessionStore keeps no lock fences in
  # the core (the lock table fences writes), so no lease is judged by it.
  defp core_clock, do: System.os_time(:millisecond)

  # ---------------------------------------------------------------------------------------
  # helpers

  defp prepare_updates(state, updates, opts) do
    expected = opts[:expected_versions] || %{}
    tokens = opts[:lock_tokens] || %{}
    metadata = opts[:metadata] || %{}

    updates
    |> Enum.reduce_while({:ok, [], %{}}, fn {name, value}, {:ok, acc, seen} ->
      result =
        with :ok <- not_repeated(seen, name),
             {:ok, current} <- fetch(state.id, name),
             :ok <- version_matches(current, Map.get(expected, name)),
             :ok <-
               DSPex.Bridge.OptimizerCoordinator.write_allowed(
                 state.id,
                 name,
                 Map.get(tokens, name)
               ),
             {:ok, stored} <- VariableType.validate(current.type, value, current.constraints) do
          {:ok, {current, bump(current, stored, metadata), :update}}
        end

      case result do
        {:ok, change} -> {:cont, {:ok, [change | acc], Map.put(seen, name, true)}}
        {:error, reason} -> {:halt, {:error, tag_error(updates, name, reason)}}
      end
    end)
    |> case do
      {:ok, changes, _} -> {:ok, Enum.reverse(changes)}
      error -> error
    end
  end

  # A single update reports its error as is; a batch says which variable failed.
  defp tag_error([_], _name, reason), do: reason
  defp tag_error(_, name, reason), do: {name, reason}

  defp not_repeated(seen, name) do
    if Map.has_key?(seen, name), do: {:error, {:duplicate_variable, name}}, else: :ok
  end

  defp version_matches(_current, nil), do: :ok
  defp version_matches(%{version: v}, v), do: :ok
  defp version_matches(%{version: v}, _), do: {:error, {:version_mismatch, v}}

  defp bump(current, stored, metadata) do
    %{
      current
      | value: stored,
        version: current.version + 1,
        updated_at: System.system_time(:millisecond),
        metadata: Map.merge(current.metadata, metadata)
    }
  end

  defp absent(key, name) do
    if :ets.member(Tables.variables(), key), do: {:error, {:variable_exists, name}}, else: :ok
  end

  defp below_limit(state) do
    if state.count >= state.meta.max_variables,
      do: {:error, {:too_many_variables, state.meta.max_variables}},
      else: :ok
  end

  @doc false
  def count_variables(id) do
    :ets.select_count(Tables.variables(), [{{{id, :_}, :_, :_}, [], [true]}])
  end

  defp fetch(id, name) do
    case :ets.lookup(Tables.variables(), {id, name}) do
      [{_, var, _}] -> {:ok, var}
      [] -> {:error, {:variable_not_found, name}}
    end
  end

  defp history_entry(id, name, version) do
    entries = history_of(id, name)

    case Enum.find(entries, &(&1.version == version)) do
      nil -> {:error, {:version_not_found, version}}
      entry -> {:ok, entry}
    end
  end

  defp history_of(id, name) do
    case :ets.lookup(Tables.history(), {id, name}) do
      [{_, entries}] -> entries
      [] -> []
    end
  end

  # All rows of one change go in with one :ets.insert per table, so a reader sees either
  # none or all of a batch's variables.
  defp commit(state, changes) do
    :ok = count_versions(state, changes)
    limit = state.meta.history_limit

    :ets.insert(
      Tables.variables(),
      Enum.map(changes, fn {_old, new, _} -> {{state.id, new.name}, new, state.touch} end)
    )

    :ets.insert(
      Tables.history(),
      Enum.map(changes, fn {_old, new, kind} ->
        entry = %{version: new.version, value: new.value, updated_at: new.updated_at, change: kind}
        {{state.id, new.name}, Enum.take([entry | history_of(state.id, new.name)], limit)}
      end)
    )

    for {old, new, _} <- changes, old != nil, do: Watchers.notify(state, old, new)

    :ok
  end

  # Every new version is counted by the session's core first (registrations are, by
  # `add_node`): the rows then carry the versions it gave. A row whose version the core does
  # not expect is a bug, raised here (and answered as an internal error) before any row
  # changes.
  defp count_versions(state, changes) do
    bumped = for {%{version: old}, %{version: new} = var, _} <- changes, new != old, do: var

    case bumped do
      [] ->
        :ok

      _ ->
        writes = for var <- bumped, do: {var.name, var.version - 1, nil}

        expected = Enum.map(bumped, & &1.version)
        {:ok, {:versions, ^expected}} = core(state, {:write, writes})
        :ok
    end
  end

  defp destroy(state), do: destroy_rows(state.id)

  @doc false
  # Everything a session holds on this node: rows, policies, graph, watchers.
  def destroy_rows(id) do
    Native.acl_remove_session(id)
    # The tables are emptied in parallel: for a large session this is most of the work.
    others =
      Task.async(fn ->
        :ets.match_delete(Tables.history(), {{id, :_}, :_})
      end)

    :ets.match_delete(Tables.variables(), {{id, :_}, :_, :_})
    Task.await(others, :infinity)
    :ets.delete(Tables.watchers(), id)
    :ets.delete(Tables.keep(), id)
    Native.graph_unpublish(id)
    :ets.delete(Tables.sessions(), id)
    :ok
  end

  @doc false
  # Whether `id` lives here under HA (its writes are replicated).
  def replicated?(id), do: :ets.member(Tables.keep(), id)

  @doc false
  # A message for the session's ordered, replicated path (lock grants and releases).
  def record(id, message),
    do: DSPex.Bridge.SessionStore.session_message(id, message, 10_000)
end
