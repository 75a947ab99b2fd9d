defmodule DSPex.Bridge.DependencyManager.Propagation do
  @moduledoc false
  # Reactive recompute after a write, run inside the session's process so it is serialized
  # with the session's other writes.
  #
  # The graph gives every variable downstream of the changed ones, each once, in topological
  # order, so a variable is recomputed at most once per change and only after all of its
  # inputs are final (diamond a -> b, c -> d: d once, after b and c). A variable is
  # recomputed only if one of its inputs really changed in this pass (early cutoff: a
  # recompute that yields the old value changes nothing downstream). A compute function that
  # raises, throws, exits or returns an invalid value marks its variable stale and every
  # computed variable fed by it stale with {:upstream_failed, name}; independent branches go
  # on, and nothing already committed is undone.

  alias DSPex.Bridge.{Native, Variable, VariableType}

  @type result :: %{
          changes: [{Variable.t(), Variable.t(), :compute}],
          marks: [Variable.t()],
          failures: [{term(), term()}],
          affected: non_neg_integer()
        }

  @spec run(reference(), [term()], (term() -> Variable.t() | nil)) :: result()
  def run(graph, changed, fetch) do
    {:ok, order} = Native.graph_update_order(graph, changed)
    sources = MapSet.new(changed)
    affected = Enum.reject(order, &MapSet.member?(sources, &1))

    init = %{changed: sources, current: %{}, failed: %{}, changes: [], marks: [], failures: []}

    acc =
      Enum.reduce(affected, init, fn name, acc ->
        case fetch_current(acc, name, fetch) do
          %Variable{compute: {fun, inputs}} = var -> step(acc, var, fun, inputs, fetch)
          _ -> acc
        end
      end)

    %{
      changes: Enum.reverse(acc.changes),
      marks: Enum.reverse(acc.marks),
      failures: Enum.reverse(acc.failures),
      affected: length(affected)
    }
  end

  defp step(acc, var, fun, inputs, fetch) do
    cond do
      failed = Enum.find(inputs, &Map.has_key?(acc.failed, &1)) ->
        fail(acc, var, {:upstream_failed, failed}, false)

      Enum.any?(inputs, &MapSet.member?(acc.changed, &1)) ->
        recompute(acc, var, fun, inputs, fetch)

      true ->
        acc
    end
  end

  defp recompute(acc, var, fun, inputs, fetch) do
    values = Map.new(inputs, fn input -> {input, fetch_current(acc, input, fetch).value} end)

    case evaluate(fun, values, var) do
      {:ok, value} when value == var.value and var.stale == nil ->
        acc

      {:ok, value} when value == var.value ->
        mark(acc, %{var | stale: nil})

      {:ok, value} ->
        new = %{var | value: value, version: var.version + 1, updated_at: now(), stale: nil}

        %{
          acc
          | changed: MapSet.put(acc.changed, var.name),
            current: Map.put(acc.current, var.name, new),
            changes: [{var, new, :compute} | acc.changes]
        }

      {:error, reason} ->
        fail(acc, var, reason, true)
    end
  end

  @doc false
  # Runs a compute function and checks its result against the variable's type.
  def evaluate(fun, values, var) do
    result =
      try do
        {:ok, DSPex.Bridge.Compute.run(fun, values)}
      rescue
        exception -> {:error, {:compute_failed, exception}}
      catch
        kind, reason -> {:error, {:compute_failed, {kind, reason}}}
      end

    with {:ok, value} <- result,
         {:error, reason} <- VariableType.validate(var.type, value, var.constraints) do
      {:error, {:compute_failed, reason}}
    end
  end

  defp fail(acc, var, reason, report?) do
    acc = mark(acc, %{var | stale: reason})
    acc = %{acc | failed: Map.put(acc.failed, var.name, reason)}
    if report?, do: %{acc | failures: [{var.name, reason} | acc.failures]}, else: acc
  end

  defp mark(acc, var) do
    %{acc | marks: [var | acc.marks], current: Map.put(acc.current, var.name, var)}
  end

  defp fetch_current(acc, name, fetch), do: Map.get_lazy(acc.current, name, fn -> fetch.(name) end)

  defp now, do: System.system_time(:millisecond)
end
