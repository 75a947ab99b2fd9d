defmodule DSPex.Bridge.SessionStore.Codec do
  @moduledoc false
  # The session snapshot: the Erlang external term format of a plain map (no structs, no
  # funs, no pids), inside the Rust core's checksummed, versioned frame. Import checks the
  # frame first (magic, version, length, CRC-32), then decodes with [:safe] (no new atoms),
  # then re-validates every variable as if it were registered anew.

  alias DSPex.Bridge.{Native, Options, Variable, VariableType}
  alias DSPex.Bridge.SessionStore.Tables
  import DSPex.Bridge.Options, only: [is_id: 1]

  # Format 2 writes variables and history entries as tuples (var_tuple/1 and var_map/1 give
  # the field order): the key names of maps made format 1 snapshots twice as large. Format 1
  # is still read.
  @payload_format 2

  @spec encode(map(), [Variable.t()], [{term(), list()}], [tuple()]) ::
          {:ok, binary()} | {:error, term()}
  def encode(meta, variables, histories, edges) do
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

  defp select_access(id),
    do: :ets.select(Tables.access(), [{{{id, :"$1"}, :"$2", :"$3"}, [], [{{:"$1", :"$2", :"$3"}}]}])

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
         {:ok, meta, vars, hist} <- check_payload(term, trust) do
      {:ok, meta, vars, hist}
    else
      {:error, {:invalid_snapshot, _}} = error -> error
      {:error, reason} -> {:error, {:invalid_snapshot, reason}}
    end
  end

  def decode(other, _trust), do: {:error, {:invalid_snapshot, {:not_a_binary, other}}}

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
      {:ok, Map.put(meta, :graph, Native.graph_new()), {:split, v, a, edges}, {:split, h}}
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
         :ok <- check_access(Map.get(meta, :access, [])),
         {:ok, vars} <- Options.map_ok(vars, &check_variable(&1, meta.id)),
         {:ok, hist} <- Options.map_ok(hist, &check_history/1),
         {:ok, graph} <- rebuild_graph(vars, Map.get(p, :graph, [])) do
      {:ok, Map.merge(meta, %{graph: graph}), vars, hist}
    end
  end

  defp check_maps(_), do: {:error, {:invalid_snapshot, :bad_structure}}

  defp check_meta(%{id: id, ttl: ttl, history_limit: h, max_variables: m, metadata: md} = meta)
       when is_id(id) and (ttl == :infinity or (is_integer(ttl) and ttl > 0)) and
              is_integer(h) and h > 0 and is_integer(m) and m > 0 and is_map(md) do
    meta = Map.put_new(meta, :propagation, :sync)

    if meta.propagation in [:sync, :async],
      do: {:ok, meta},
      else: {:error, {:invalid_snapshot, :bad_session}}
  end

  defp check_meta(_), do: {:error, {:invalid_snapshot, :bad_session}}

  defp check_variable(%{name: name, type: type, value: value, version: v} = var, session_id)
       when is_id(name) and is_integer(v) and v > 0 do
    with :ok <- check_compute(Map.get(var, :compute)),
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
         compute: Map.get(var, :compute),
         stale: Map.get(var, :stale)
       }}
    else
      {:error, reason} -> {:error, {:invalid_snapshot, {:bad_variable, name, reason}}}
    end
  end

  defp check_variable(_, _), do: {:error, {:invalid_snapshot, :bad_variable}}

  defp check_compute(nil), do: :ok

  defp check_compute({fun, [_ | _] = inputs}) when is_function(fun, 1) do
    if Enum.all?(inputs, &DSPex.Bridge.Options.id?/1), do: :ok, else: {:error, :bad_compute}
  end

  defp check_compute(_), do: {:error, :bad_compute}

  defp check_access(entries) when is_list(entries) do
    Enum.reduce_while(entries, :ok, fn
      {name, mode, rules}, :ok
      when is_id(name) and mode in [:private, :protected, :public] and is_list(rules) ->
        case Native.acl_validate(rules) do
          :ok -> {:cont, :ok}
          {:error, reason} -> {:halt, {:error, {:invalid_snapshot, {:bad_access, name, reason}}}}
        end

      _, :ok ->
        {:halt, {:error, {:invalid_snapshot, :bad_access}}}
    end)
  rescue
    ArgumentError -> {:error, {:invalid_snapshot, :bad_access}}
  end

  defp check_access(_), do: {:error, {:invalid_snapshot, :bad_access}}

  # The graph is rebuilt (and so re-checked for cycles and unknown variables) before the
  # session exists; the import then just adopts it.
  defp rebuild_graph(vars, edges) when is_list(edges) do
    graph = Native.graph_new()
    Native.graph_add_nodes(graph, Enum.map(vars, & &1.name))

    with true <- Enum.all?(edges, &edge?/1),
         {:ok, _} <- Native.graph_add_edges(graph, edges) do
      {:ok, graph}
    else
      false -> {:error, {:invalid_snapshot, :bad_graph}}
      {:error, reason} -> {:error, {:invalid_snapshot, {:bad_graph, reason}}}
    end
  rescue
    ArgumentError -> {:error, {:invalid_snapshot, :bad_graph}}
  end

  defp rebuild_graph(_vars, _edges), do: {:error, {:invalid_snapshot, :bad_graph}}

  defp edge?({from, to, kind}) when is_id(from) and is_id(to),
    do: kind in [:data, :compute, :constraint] or is_binary(kind)

  defp edge?(_), do: false

  defp check_history({name, entries}) when is_id(name) and is_list(entries) do
    if Enum.all?(entries, &match?(%{version: v, value: _} when is_integer(v), &1)),
      do: {:ok, {name, entries}},
      else: {:error, {:invalid_snapshot, {:bad_history, name}}}
  end

  defp check_history(_), do: {:error, {:invalid_snapshot, :bad_history}}
end
