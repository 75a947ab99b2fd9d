defmodule DSPex.Bridge.SessionStore.Codec do
  @moduledoc false
  # The session snapshot: the Erlang external term format of a plain map (no structs, no
  # funs, no pids), inside the Rust core's checksummed, versioned frame. Import checks the
  # frame first (magic, version, length, CRC-32), then decodes with [:safe] (no new atoms),
  # refuses a payload holding a fun, pid, port or reference anywhere (a snapshot never
  # carries code: computed variables travel as {module, function} references, see
  # DSPex.Bridge.Compute), then holds every setting, variable, history entry, policy and
  # edge to exactly what the calls that would have built them accept.

  alias DSPex.Bridge.{Compute, Native, Options, Variable, VariableType}
  alias DSPex.Bridge.SessionStore.{Limits, Tables}
  import DSPex.Bridge.Options, only: [is_id: 1]

  # Format 2 writes variables and history entries as tuples (var_tuple/1 and var_map/1 give
  # the field order): the key names of maps made format 1 snapshots twice as large. Format 1
  # is still read.
  @payload_format 2

  @spec encode(map(), [Variable.t()], [{term(), list()}], [tuple()]) ::
          {:ok, binary()} | {:error, term()}
  def encode(meta, variables, histories, edges) do
    case Enum.find(variables, &closure_compute?/1) do
      nil -> encode_checked(meta, variables, histories, edges)
      var -> {:error, {:not_exportable, {:closure_compute, var.name}}}
    end
  end

  defp closure_compute?(%{compute: {fun, _}}), do: Compute.closure?(fun)
  defp closure_compute?(_var), do: false

  defp encode_checked(meta, variables, histories, edges) do
    payload =
      :erlang.term_to_binary(%{
        format: @payload_format,
        session: meta,
        variables: Enum.map(variables, &var_tuple/1),
        history: Enum.map(histories, fn {n, es} -> {n, Enum.map(es, &entry_tuple/1)} end),
        graph: edges
      })

    if byte_size(payload) > Native.snapshot_dirty_threshold(),
      do: Native.snapshot_encode_dirty(payload),
      else: Native.snapshot_encode(payload)
  end

  @doc false
  # The cluster-internal form (format 3: HA migration and replica snapshots). Variables,
  # history and access policies are each read from ETS and encoded by their own process, in
  # parallel, into binaries that are never copied between processes; the receiving node
  # decodes and stores them in parallel too (see SessionStore.Session.load/5). Only a trusted
  # (cluster) import reads it.
  def encode_split(id, meta, edges) do
    # Variables come as two binaries so the receiver can store the halves in parallel.
    parts = [
      fn ->
        vars = id |> select_variables() |> Enum.map(&var_tuple/1)
        {first, second} = Enum.split(vars, div(length(vars), 2))
        [:erlang.term_to_binary(first), :erlang.term_to_binary(second)]
      end,
      fn -> id |> select_history() |> Enum.map(&history_tuples/1) |> :erlang.term_to_binary() end,
      fn -> id |> select_access() |> :erlang.term_to_binary() end
    ]

    [vars, hist, access] = parts |> Enum.map(&Task.async/1) |> Task.await_many(:infinity)

    payload =
      :erlang.term_to_binary(%{
        format: 3,
        session: Map.delete(meta, :access),
        variables: vars,
        history: hist,
        access: access,
        graph: edges
      })

    Native.snapshot_encode_dirty(payload)
  end

  defp select_variables(id),
    do: :ets.select(Tables.variables(), [{{{id, :_}, :"$1", :_}, [], [:"$1"]}])

  defp select_history(id),
    do: :ets.select(Tables.history(), [{{{id, :"$1"}, :"$2"}, [], [{{:"$1", :"$2"}}]}])

  defp select_access(id), do: Native.acl_session_policies(id)

  defp history_tuples({n, es}), do: {n, Enum.map(es, &entry_tuple/1)}

  @doc false
  # Format 3 parts back to terms (run by the importing session's processes; a malformed
  # part raises there, and the import fails). A cluster node validated its variables when
  # they were written: only their shape is checked here.
  def variables_from(bin, session_id) do
    for t <- :erlang.binary_to_term(bin) do
      %{name: name, type: type, version: v} = var = var_map(t)
      true = is_id(name) and is_atom(type) and is_integer(v) and v > 0
      # var_map/1 gives every field but these two: the result is a complete struct.
      Map.merge(var, %{__struct__: Variable, session_id: session_id})
    end
  end

  @doc false
  def history_from(bin),
    do: for({n, es} <- :erlang.binary_to_term(bin), do: {n, Enum.map(es, &entry_map/1)})

  @doc false
  def access_from(bin), do: :erlang.binary_to_term(bin)

  defp var_tuple(%Variable{} = v) do
    {v.name, v.type, v.value, v.version, v.created_at, v.updated_at, v.constraints, v.metadata,
     v.description, v.compute, v.stale}
  end

  defp entry_tuple(e), do: {e.version, e.value, e.updated_at, Map.get(e, :change)}

  defp var_map(
         {name, type, value, version, created, updated, constraints, metadata, desc, compute, stale}
       ) do
    %{
      name: name,
      type: type,
      value: value,
      version: version,
      created_at: created,
      updated_at: updated,
      constraints: constraints,
      metadata: metadata,
      description: desc,
      compute: compute,
      stale: stale
    }
  end

  defp var_map(_), do: :bad

  defp entry_map({version, value, updated, change}),
    do: %{version: version, value: value, updated_at: updated, change: change}

  defp entry_map(_), do: :bad

  # Format 2 back to the format 1 shapes the checks below read.
  defp as_maps(%{format: 2, variables: vars, history: hist} = p)
       when is_list(vars) and is_list(hist) do
    %{p | variables: Enum.map(vars, &var_map/1), history: history_maps(hist)}
  end

  defp as_maps(p), do: p

  defp history_maps(hist) do
    Enum.map(hist, fn
      {n, es} when is_list(es) -> {n, Enum.map(es, &entry_map/1)}
      other -> other
    end)
  end

  @spec decode(term(), :trusted | :untrusted) ::
          {:ok, map(), [Variable.t()], [{term(), list()}]} | {:error, term()}
  def decode(frame, trust \\ :untrusted)

  def decode(frame, trust) when is_binary(frame) do
    decoded =
      if byte_size(frame) > Native.snapshot_dirty_threshold(),
        do: Native.snapshot_decode_dirty(frame),
        else: Native.snapshot_decode(frame)

    with {:ok, _version, payload} <- decoded,
         {:ok, term} <- safe_binary_to_term(payload, trust),
         :ok <- no_code(term, trust),
         {:ok, meta, vars, hist} <- check_payload(term, trust) do
      {:ok, meta, vars, hist}
    else
      {:error, {:invalid_snapshot, _}} = error -> error
      {:error, reason} -> {:error, {:invalid_snapshot, reason}}
    end
  end

  def decode(other, _trust), do: {:error, {:invalid_snapshot, {:not_a_binary, other}}}

  # Funs (code), and pids, ports and refs (which name things of another VM), anywhere in an
  # untrusted payload. Cluster frames carry closures between nodes of one cluster.
  defp no_code(_term, :trusted), do: :ok

  defp no_code(term, :untrusted) do
    case forbidden([term]) do
      nil -> :ok
      kind -> {:error, {:invalid_snapshot, {:forbidden_term, kind}}}
    end
  end

  # An explicit stack, so that no nesting depth matters.
  defp forbidden([]), do: nil
  defp forbidden([t | _]) when is_function(t), do: :fun
  defp forbidden([t | _]) when is_pid(t), do: :pid
  defp forbidden([t | _]) when is_port(t), do: :port
  defp forbidden([t | _]) when is_reference(t), do: :reference
  defp forbidden([t | rest]) when is_tuple(t), do: forbidden(Tuple.to_list(t) ++ rest)
  defp forbidden([t | rest]) when is_map(t), do: forbidden(Map.keys(t) ++ Map.values(t) ++ rest)
  defp forbidden([[h | tail] | rest]), do: forbidden([h, tail | rest])
  defp forbidden([_ | rest]), do: forbidden(rest)

  defp safe_binary_to_term(payload, trust) do
    {:ok, :erlang.binary_to_term(payload, if(trust == :trusted, do: [], else: [:safe]))}
  rescue
    ArgumentError -> {:error, {:invalid_snapshot, :bad_payload}}
  end

  defp check_payload(
         %{format: 3, session: meta, variables: v, history: h, access: a, graph: edges},
         :trusted
       )
       when is_map(meta) and is_list(v) and is_binary(h) and is_binary(a) and is_list(edges) do
    with {:ok, meta} <- check_meta(meta) do
      {:ok, Map.put(meta, :core, Native.session_new()), {:split, v, a, edges}, {:split, h}}
    end
  end

  defp check_payload(%{format: 3}, :untrusted),
    do: {:error, {:invalid_snapshot, :cluster_internal_format}}

  defp check_payload(%{format: f} = p, _trust) when f in 1..@payload_format,
    do: check_maps(as_maps(p))

  defp check_payload(%{format: f}, _trust) when is_integer(f) and f > 3,
    do: {:error, {:invalid_snapshot, {:unsupported_payload_format, f}}}

  defp check_payload(_, _trust), do: {:error, {:invalid_snapshot, :bad_structure}}

  defp check_maps(%{session: meta, variables: vars, history: hist} = p)
       when is_map(meta) and is_list(vars) and is_list(hist) do
    with {:ok, meta} <- check_meta(meta),
         :ok <- proper(vars, :variables),
         :ok <- proper(hist, :history),
         {:ok, vars} <- Options.map_ok(vars, &check_variable(&1, meta.id)),
         :ok <- check_counts(vars, meta),
         :ok <- check_computes(vars),
         :ok <- check_access(Map.get(meta, :access, []), vars),
         {:ok, hist} <- check_histories(hist, vars, meta.history_limit),
         {:ok, core} <- rebuild_core(vars, Map.get(p, :graph, [])) do
      {:ok, Map.put(meta, :core, core), vars, hist}
    end
  end

  defp check_maps(_), do: {:error, {:invalid_snapshot, :bad_structure}}

  defp check_meta(%{id: id, ttl: ttl, history_limit: h, max_variables: m, metadata: md} = meta)
       when is_id(id) and is_map(md) do
    meta = Map.put_new(meta, :propagation, :sync)

    cond do
      not Limits.ttl?(ttl) ->
        {:error, {:invalid_snapshot, {:bad_session, {:ttl, ttl}}}}

      not Limits.history_limit?(h) ->
        {:error, {:invalid_snapshot, {:bad_session, {:history_limit, h}}}}

      not Limits.max_variables?(m) ->
        {:error, {:invalid_snapshot, {:bad_session, {:max_variables, m}}}}

      meta.propagation not in [:sync, :async] ->
        {:error, {:invalid_snapshot, :bad_session}}

      not is_integer(Map.get(meta, :created_at, 0)) ->
        {:error, {:invalid_snapshot, :bad_session}}

      true ->
        {:ok, meta}
    end
  end

  defp check_meta(_), do: {:error, {:invalid_snapshot, :bad_session}}

  defp proper(list, what) do
    if Options.proper_list?(list),
      do: :ok,
      else: {:error, {:invalid_snapshot, {:bad_structure, what}}}
  end

  # As many variables as the session allows, each name once.
  defp check_counts(vars, meta) do
    names = Enum.map(vars, & &1.name)

    cond do
      length(vars) > meta.max_variables ->
        {:error, {:invalid_snapshot, {:too_many_variables, meta.max_variables}}}

      length(Enum.uniq(names)) != length(names) ->
        {:error, {:invalid_snapshot, {:duplicate_variable, hd(names -- Enum.uniq(names))}}}

      true ->
        :ok
    end
  end

  # A computed variable's inputs are other variables of the snapshot.
  defp check_computes(vars) do
    names = MapSet.new(vars, & &1.name)

    Enum.find_value(vars, :ok, fn
      %Variable{compute: {_ref, inputs}, name: name} ->
        if name in inputs or not Enum.all?(inputs, &MapSet.member?(names, &1)),
          do: {:error, {:invalid_snapshot, {:bad_variable, name, {:invalid_compute, inputs}}}}

      _ ->
        nil
    end)
  end

  defp check_variable(%{name: name, type: type, value: value, version: v} = var, session_id)
       when is_id(name) do
    with :ok <- check_fields(var),
         {:ok, compute} <- check_compute(Map.get(var, :compute)),
         {:ok, constraints} <-
           VariableType.normalize_constraints(type, Map.get(var, :constraints, %{})),
         {:ok, stored} <- VariableType.validate(type, value, constraints) do
      {:ok,
       %Variable{
         session_id: session_id,
         name: name,
         type: type,
         value: stored,
         version: v,
         created_at: Map.get(var, :created_at),
         updated_at: Map.get(var, :updated_at),
         constraints: constraints,
         metadata: Map.get(var, :metadata, %{}),
         description: Map.get(var, :description),
         compute: compute,
         stale: Map.get(var, :stale)
       }}
    else
      {:error, reason} -> {:error, {:invalid_snapshot, {:bad_variable, name, reason}}}
    end
  end

  defp check_variable(_, _), do: {:error, {:invalid_snapshot, :bad_variable}}

  defp check_fields(var) do
    cond do
      not Limits.version?(var.version) -> {:error, {:bad_version, var.version}}
      not is_integer(Map.get(var, :created_at, 0)) -> {:error, :bad_created_at}
      not is_integer(Map.get(var, :updated_at, 0)) -> {:error, :bad_updated_at}
      not is_map(Map.get(var, :metadata, %{})) -> {:error, :bad_metadata}
      not description?(Map.get(var, :description)) -> {:error, :bad_description}
      true -> :ok
    end
  end

  defp description?(nil), do: true
  defp description?(d), do: is_binary(d) and String.valid?(d)

  defp check_compute(nil), do: {:ok, nil}

  defp check_compute({ref, [_ | _] = inputs}) do
    cond do
      not (Options.proper_list?(inputs) and Enum.all?(inputs, &Options.id?/1)) ->
        {:error, {:invalid_compute, inputs}}

      true ->
        with {:ok, ref} <- Compute.check_imported(ref), do: {:ok, {ref, Enum.uniq(inputs)}}
    end
  end

  defp check_compute(other), do: {:error, {:invalid_compute, other}}

  # Policies of the snapshot's variables, each at most once, as add_rule/3 would take them.
  defp check_access(entries, vars) when is_list(entries) do
    names = MapSet.new(vars, & &1.name)

    with :ok <- proper(entries, :access),
         :ok <- unique_names(Enum.map(entries, &elem_or_nil/1), :access) do
      check_policies(entries, names)
    end
  end

  defp check_access(_, _vars), do: {:error, {:invalid_snapshot, :bad_access}}

  defp elem_or_nil(t) when is_tuple(t) and tuple_size(t) > 0, do: elem(t, 0)
  defp elem_or_nil(_), do: nil

  defp unique_names(names, what) do
    if length(Enum.uniq(names)) == length(names),
      do: :ok,
      else: {:error, {:invalid_snapshot, {:duplicate, what, hd(names -- Enum.uniq(names))}}}
  end

  defp check_policies(entries, names) do
    Enum.reduce_while(entries, :ok, fn
      {name, mode, rules}, :ok
      when is_id(name) and mode in [:private, :protected, :public] and is_list(rules) ->
        with true <- MapSet.member?(names, name) and Options.proper_list?(rules),
             :ok <- Native.acl_validate(rules) do
          {:cont, :ok}
        else
          false -> {:halt, {:error, {:invalid_snapshot, {:bad_access, name}}}}
          {:error, reason} -> {:halt, {:error, {:invalid_snapshot, {:bad_access, name, reason}}}}
        end

      _, :ok ->
        {:halt, {:error, {:invalid_snapshot, :bad_access}}}
    end)
  rescue
    ArgumentError -> {:error, {:invalid_snapshot, :bad_access}}
  end

  # The graph is rebuilt (and so re-checked for cycles and unknown variables) before the
  # session exists; the import then just adopts it.
  # A computed variable's edges from its inputs are part of its declaration: they are added
  # whether or not the snapshot lists them, as registering it would.
  defp rebuild_core(vars, edges) when is_list(edges) do
    core = Native.session_new()

    with true <- Options.proper_list?(edges) and Enum.all?(edges, &edge?/1),
         :ok <- Native.session_load(core, core_variables(vars), edges) do
      {:ok, core}
    else
      false -> {:error, {:invalid_snapshot, :bad_graph}}
      {:error, reason} -> {:error, {:invalid_snapshot, {:bad_graph, reason}}}
    end
  rescue
    ArgumentError -> {:error, {:invalid_snapshot, :bad_graph}}
  end

  defp rebuild_core(_vars, _edges), do: {:error, {:invalid_snapshot, :bad_graph}}

  @doc false
  # What the session's core keeps of each variable: `{name, version, compute inputs}`.
  def core_variables(vars) do
    for var <- vars do
      inputs = with {_fun, inputs} <- var.compute, do: inputs
      {var.name, var.version, inputs || []}
    end
  end

  defp edge?({from, to, kind}) when is_id(from) and is_id(to),
    do: kind in [:data, :compute, :constraint] or is_binary(kind)

  defp edge?(_), do: false

  # History of the snapshot's variables only, each once: at most history_limit entries,
  # newest first, versions distinct and no newer than the variable, values of its type.
  defp check_histories(hist, vars, limit) do
    by_name = Map.new(vars, &{&1.name, &1})

    with :ok <- unique_names(Enum.map(hist, &elem_or_nil/1), :history) do
      Options.map_ok(hist, &check_history(&1, by_name, limit))
    end
  end

  defp check_history({name, entries}, by_name, limit) when is_id(name) and is_list(entries) do
    bad = {:error, {:invalid_snapshot, {:bad_history, name}}}

    with %Variable{} = var <- Map.get(by_name, name, bad),
         true <- Options.proper_list?(entries) and length(entries) <= limit,
         true <- Enum.all?(entries, &entry?(&1, var)),
         versions = Enum.map(entries, & &1.version),
         true <- versions == Enum.sort(versions, :desc) and versions == Enum.uniq(versions) do
      {:ok, {name, entries}}
    else
      _ -> bad
    end
  end

  defp check_history(_, _by_name, _limit), do: {:error, {:invalid_snapshot, :bad_history}}

  defp entry?(%{version: v, value: value, updated_at: at} = e, var) do
    Limits.version?(v) and v <= var.version and is_integer(at) and
      change?(Map.get(e, :change)) and of_type?(var.type, value)
  end

  defp entry?(_, _var), do: false

  # An old value is of the variable's type (constraints may have changed since it was
  # written; rollback checks it against the current ones). A :choice value is any term.
  defp of_type?(:choice, _value), do: true
  defp of_type?(type, value), do: match?({:ok, _}, VariableType.validate(type, value, %{}))

  defp change?(c) when c in [nil, :register, :update, :compute], do: true
  defp change?({:rollback, v}), do: Limits.version?(v)
  defp change?(_), do: false
end
