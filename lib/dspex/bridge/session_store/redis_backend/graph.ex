defmodule DSPex.Bridge.SessionStore.RedisBackend.Graph do
  @moduledoc false
  # Dependency edges of a Redis session (DependencyManager's calls, routed here). The graph
  # is a hash beside the session's (adjacency lists and kinds, see Scripts) with a version
  # `gver` that every change bumps. A change is one script that searches the graph for the
  # cycle an edge would close before it adds it: Redis runs scripts one at a time, so two
  # nodes adding edges at once can never close a cycle together, and nobody retries. Reads
  # take the whole graph in one round trip and walk it here.

  alias DSPex.Bridge.Options
  alias DSPex.Bridge.SessionStore.RedisBackend
  alias DSPex.Bridge.SessionStore.RedisBackend.Scripts

  @kinds [:data, :compute, :constraint]

  # ---------------------------------------------------------------------------------------
  # changes: each one script (see Scripts: graph_add, graph_remove, graph_clear)

  def add(backend, id, new_edges) do
    with {:ok, new_edges} <- check_edges(new_edges) do
      args =
        [length(new_edges)] ++
          Enum.flat_map(new_edges, fn {from, to, kind} ->
            [RedisBackend.encode_id(from), RedisBackend.encode_id(to), :erlang.term_to_binary(kind)]
          end)

      case RedisBackend.run_session_script(backend, Scripts.graph_add(), id, args) do
        {:ok, ["ok", added]} -> {:ok, added}
        {:ok, ["missing", f]} -> {:error, {:variable_not_found, RedisBackend.decode_id(f)}}
        {:ok, ["cycle" | path]} -> {:error, {:cycle, Enum.map(path, &RedisBackend.decode_id/1)}}
        error -> error
      end
    end
  end

  def remove(backend, id, from, to) do
    args = [RedisBackend.encode_id(from), RedisBackend.encode_id(to)]

    case RedisBackend.run_session_script(backend, Scripts.graph_remove(), id, args) do
      {:ok, "ok"} -> :ok
      {:ok, "not_found"} -> {:error, :dependency_not_found}
      error -> error
    end
  end

  def clear(backend, id, var) do
    case RedisBackend.run_session_script(backend, Scripts.graph_clear(), id, [
           RedisBackend.encode_id(var)
         ]) do
      {:ok, "ok"} -> :ok
      {:ok, "missing"} -> {:error, {:variable_not_found, var}}
      error -> error
    end
  end

  # ---------------------------------------------------------------------------------------
  # reads: the whole graph in one round trip, walked here

  def read(backend, id) do
    case RedisBackend.run_session_script(backend, Scripts.graph_dump(), id, []) do
      {:ok, [version, flat]} -> {:ok, version, edges_of(flat)}
      error -> error
    end
  end

  @doc false
  # `[{from, to, kind}]` from the graph hash's flat HGETALL list.
  def edges_of(flat) do
    for [field, kind] <- Enum.chunk_every(flat, 2), match?("k:" <> _, field) do
      "k:" <> pair = field
      [from, to] = netstrings(pair)
      {RedisBackend.decode_id(from), RedisBackend.decode_id(to), :erlang.binary_to_term(kind)}
    end
  end

  defp netstrings(""), do: []

  defp netstrings(binary) do
    [length, rest] = :binary.split(binary, ":")
    n = String.to_integer(length)
    <<item::binary-size(n), rest::binary>> = rest
    [item | netstrings(rest)]
  end

  def neighbours(backend, id, var, which) do
    with {:ok, _v, edges} <- read(backend, id),
         :ok <- known(backend, id, var) do
      case which do
        :dependencies -> {:ok, for({from, ^var, _} <- edges, do: from)}
        :dependents -> {:ok, for({^var, to, _} <- edges, do: to)}
        :upstream -> {:ok, order(edges, reach(edges, [var], :up) -- [var])}
        :downstream -> {:ok, order(edges, reach(edges, [var], :down) -- [var])}
      end
    end
  end

  def update_order(backend, id, changed) do
    with {:ok, _v, edges} <- read(backend, id),
         :ok <- Enum.reduce_while(changed, :ok, &known_step(backend, id, &1, &2)) do
      {:ok, order(edges, reach(edges, changed, :down))}
    end
  end

  def cycle_path(backend, id, from, to) do
    with {:ok, _v, edges} <- read(backend, id),
         :ok <- known(backend, id, from),
         :ok <- known(backend, id, to) do
      case cycle(edges, from, to) do
        nil -> {:error, :no_cycle}
        path -> {:ok, path}
      end
    end
  end

  defp known_step(backend, id, name, :ok) do
    case known(backend, id, name) do
      :ok -> {:cont, :ok}
      error -> {:halt, error}
    end
  end

  defp known(backend, id, name) do
    case RedisBackend.get_variable(backend, id, name) do
      {:ok, _} -> :ok
      error -> error
    end
  end

  # ---------------------------------------------------------------------------------------
  # the graph, in memory

  # The cycle `[to, ..., from, to]` that `from -> to` would close, or nil.
  defp cycle(_edges, same, same), do: [same, same]

  defp cycle(edges, from, to) do
    succ = Enum.group_by(edges, &elem(&1, 0), &elem(&1, 1))

    case path(succ, [[to]], MapSet.new([to]), from) do
      nil -> nil
      path -> path ++ [to]
    end
  end

  # Breadth-first from the paths' heads (each path is reversed) to `goal`.
  defp path(_succ, [], _seen, _goal), do: nil

  defp path(succ, paths, seen, goal) do
    case Enum.find(paths, &(hd(&1) == goal)) do
      nil ->
        {next, seen} =
          Enum.flat_map_reduce(paths, seen, fn [head | _] = p, seen ->
            fresh = Enum.reject(Map.get(succ, head, []), &MapSet.member?(seen, &1))
            {Enum.map(fresh, &[&1 | p]), Enum.reduce(fresh, seen, &MapSet.put(&2, &1))}
          end)

        path(succ, next, seen, goal)

      found ->
        Enum.reverse(found)
    end
  end

  defp reach(edges, starts, direction) do
    step =
      case direction do
        :down -> Enum.group_by(edges, &elem(&1, 0), &elem(&1, 1))
        :up -> Enum.group_by(edges, &elem(&1, 1), &elem(&1, 0))
      end

    walk(step, starts, MapSet.new(starts))
  end

  defp walk(_step, [], seen), do: MapSet.to_list(seen)

  defp walk(step, [n | rest], seen) do
    fresh = Enum.reject(Map.get(step, n, []), &MapSet.member?(seen, &1))
    walk(step, fresh ++ rest, Enum.reduce(fresh, seen, &MapSet.put(&2, &1)))
  end

  # `names` in an order where each comes after every one of them it depends on (Kahn's,
  # ties by term order so the answer is stable).
  defp order(edges, names) do
    set = MapSet.new(names)
    inner = for {f, t, _} <- edges, MapSet.member?(set, f), MapSet.member?(set, t), do: {f, t}

    indegree =
      Enum.reduce(inner, Map.new(names, &{&1, 0}), fn {_, t}, m -> Map.update!(m, t, &(&1 + 1)) end)

    succ = Enum.group_by(inner, &elem(&1, 0), &elem(&1, 1))
    ready = for({n, 0} <- indegree, do: n) |> Enum.sort()
    kahn(ready, indegree, succ, [])
  end

  defp kahn([], _indegree, _succ, acc), do: Enum.reverse(acc)

  defp kahn([n | ready], indegree, succ, acc) do
    {indegree, freed} =
      Enum.reduce(Map.get(succ, n, []), {indegree, []}, fn t, {m, freed} ->
        m = Map.update!(m, t, &(&1 - 1))
        if m[t] == 0, do: {m, [t | freed]}, else: {m, freed}
      end)

    kahn(Enum.sort(ready ++ freed), indegree, succ, [n | acc])
  end

  # ---------------------------------------------------------------------------------------

  # `{from, to}` or `{from, to, kind}` -> `{from, to, kind}`.
  defp check_edges(edges), do: Options.map_ok(edges, &check_edge/1)

  defp check_edge({_from, _to, :compute}), do: {:error, {:not_supported, :compute}}

  defp check_edge({from, to, kind}) when kind in @kinds or is_binary(kind) do
    with :ok <- check_names(from, to), do: {:ok, {from, to, kind}}
  end

  defp check_edge({from, to}), do: check_edge({from, to, :data})
  defp check_edge(other), do: {:error, {:invalid_option, {:edge, other}}}

  defp check_names(from, to) do
    import DSPex.Bridge.Options, only: [is_id: 1]

    cond do
      not is_id(from) -> {:error, {:invalid_name, from}}
      not is_id(to) -> {:error, {:invalid_name, to}}
      true -> :ok
    end
  end
end
