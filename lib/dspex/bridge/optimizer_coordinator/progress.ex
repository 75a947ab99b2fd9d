defmodule DSPex.Bridge.OptimizerCoordinator.Progress do
  @moduledoc false
  # Optimization runs bound to a lock: progress, best-so-far by objective, stall detection,
  # completion through SessionStore with the lock's fencing token, and a bounded history.
  #
  # active:  {id, run}                       set
  # history: {{session, var}, -seq}, run}    ordered_set, newest first per variable
  alias DSPex.Bridge.{Events, Native, Options, SessionStore}

  @active :dspex_bridge_optimizations
  @history :dspex_bridge_optimization_history
  @history_per_variable 100

  def tables do
    [
      {DSPex.Bridge.TableOwner, {@active, [:set, read_concurrency: true, write_concurrency: true]}},
      {DSPex.Bridge.TableOwner, {@history, [:ordered_set, write_concurrency: true]}}
    ]
  end

  # The node a run id names (`opt_N@node`); nil for an id that is not a run's.
  def node_of(id) when is_binary(id) do
    case String.split(id, "@", parts: 2) do
      ["opt_" <> _, node] -> existing_node(node)
      _ -> nil
    end
  end

  def node_of(_id), do: nil

  defp existing_node(text) do
    node = String.to_existing_atom(text)
    if node in [node() | Node.list()], do: node
  rescue
    ArgumentError -> nil
  end

  def start(lock, opts, coordinator) do
    spec = %{
      objective: &match?({dir, _} when dir in [:minimize, :maximize], &1),
      stall_reports: &Options.pos_integer?/1,
      stall_ms: &Options.pos_integer?/1,
      lease_ms: &Options.pos_integer?/1
    }

    with {:ok, o} <- Options.take(opts, spec),
         :ok <- holds?(coordinator, lock) do
      id = "opt_#{System.unique_integer([:positive, :monotonic])}@#{node()}"
      now = System.monotonic_time(:millisecond)

      run = %{
        id: id,
        session_id: lock.session_id,
        var_id: lock.var_id,
        optimizer_id: lock.optimizer_id,
        token: lock.token,
        objective: Map.get(o, :objective, {:minimize, :loss}),
        stall_reports: Map.get(o, :stall_reports, 10),
        stall_ms: Map.get(o, :stall_ms, 60_000),
        lease_ms: Map.get(o, :lease_ms, 300_000),
        status: :running,
        iteration: 0,
        best: nil,
        best_value: nil,
        best_iteration: nil,
        since_improvement: 0,
        stalled: false,
        started_at: System.system_time(:millisecond),
        last_report: now,
        reports: 0
      }

      :ets.insert(@active, {id, run})
      {:ok, id}
    end
  end

  defp holds?(coordinator, lock) do
    case Native.coordinator_info(coordinator, lock.session_id, lock.var_id) do
      {{holder, token, _, _, _}, _} when holder == lock.optimizer_id and token == lock.token -> :ok
      _ -> {:error, :not_lock_owner}
    end
  end

  def report(id, iteration, value, metrics, coordinator)
      when is_integer(iteration) and is_map(metrics) do
    with {:ok, run} <- fetch(id) do
      case Native.coordinator_renew(
             coordinator,
             run.session_id,
             run.var_id,
             run.optimizer_id,
             run.lease_ms
           ) do
        :ok ->
          run = record(run, iteration, value, metrics)
          :ets.insert(@active, {id, run})
          gauges(run)
          emit(:progress, run, %{iteration: iteration})
          :ok

        error ->
          finish(run, :failed, %{reason: :lock_lost})
          error
      end
    end
  end

  def report(_id, iteration, _value, metrics, _c),
    do: {:error, {:invalid_progress, {iteration, metrics}}}

  defp gauges(run) do
    labels = %{optimizer: DSPex.Bridge.Analytics.label(run.optimizer_id)}
    DSPex.Bridge.Analytics.gauge(:optimization_iteration, run.iteration, labels)
    if is_number(run.best), do: DSPex.Bridge.Analytics.gauge(:optimization_best, run.best, labels)
  end

  defp record(run, iteration, value, metrics) do
    {dir, key} = run.objective
    score = Map.get(metrics, key)

    improved =
      is_number(score) and
        (run.best == nil or (dir == :minimize and score < run.best) or
           (dir == :maximize and score > run.best))

    run = %{
      run
      | iteration: iteration,
        reports: run.reports + 1,
        last_report: System.monotonic_time(:millisecond)
    }

    if improved do
      %{
        run
        | best: score,
          best_value: value,
          best_iteration: iteration,
          since_improvement: 0,
          stalled: false
      }
    else
      run = %{run | since_improvement: run.since_improvement + 1}

      if run.since_improvement >= run.stall_reports and not run.stalled do
        emit(:stalled, run, %{reports_without_improvement: run.since_improvement})
        %{run | stalled: true}
      else
        run
      end
    end
  end

  def complete(id, final_value, final_metrics) when is_map(final_metrics) do
    with {:ok, run} <- fetch(id) do
      case SessionStore.update_variable(run.session_id, run.var_id, final_value,
             lock_token: run.token
           ) do
        {:ok, var} ->
          release(run)
          finish(run, :completed, %{final_value: final_value, final_metrics: final_metrics})
          {:ok, var}

        error ->
          error
      end
    end
  end

  def complete(_id, _value, metrics), do: {:error, {:invalid_metrics, metrics}}

  def fail(id, reason) do
    with {:ok, run} <- fetch(id) do
      release(run)
      finish(run, :failed, %{reason: reason})
      :ok
    end
  end

  # Through the coordinator's API, so that a session under HA hears of it too.
  defp release(run),
    do:
      DSPex.Bridge.OptimizerCoordinator.release_lock(run.var_id, run.optimizer_id,
        session_id: run.session_id
      )

  defp finish(run, status, extra) do
    run =
      Map.merge(
        %{run | status: status},
        Map.put(extra, :finished_at, System.system_time(:millisecond))
      )

    :ets.delete(@active, run.id)
    key = {run.session_id, run.var_id}
    :ets.insert(@history, {{key, -System.unique_integer([:positive, :monotonic])}, run})
    trim(key)
    DSPex.Bridge.Analytics.increment(:optimizations, 1, %{outcome: status})
    emit(status, run, %{})
  end

  defp trim(key) do
    entries = :ets.select(@history, [{{{key, :"$1"}, :_}, [], [:"$1"]}])

    if length(entries) > @history_per_variable do
      for seq <- Enum.drop(Enum.sort(entries), @history_per_variable),
          do: :ets.delete(@history, {key, seq})
    end
  end

  def status(id) do
    case fetch(id) do
      {:ok, run} ->
        {:ok, public(run)}

      error ->
        case :ets.select(@history, [{{:_, %{id: id}}, [], [:"$_"]}]) do
          [{_, run}] -> {:ok, public(run)}
          [] -> error
        end
    end
  end

  def active, do: for({_, run} <- :ets.tab2list(@active), do: public(run))

  def history(session_id, var_id, limit) do
    @history
    |> :ets.select([{{{{session_id, var_id}, :_}, :"$1"}, [], [:"$1"]}])
    |> Enum.take(limit)
    |> Enum.map(&public/1)
  end

  # Called by the coordinator's ticker: runs silent for longer than stall_ms are stalled.
  def check_stalls do
    now = System.monotonic_time(:millisecond)

    for {id, run} <- :ets.tab2list(@active),
        not run.stalled,
        now - run.last_report >= run.stall_ms do
      :ets.insert(@active, {id, %{run | stalled: true}})
      emit(:stalled, run, %{silent_ms: now - run.last_report})
    end

    :ok
  end

  defp fetch(id) do
    case :ets.lookup(@active, id) do
      [{_, run}] -> {:ok, run}
      [] -> {:error, {:unknown_optimization, id}}
    end
  end

  defp public(run), do: Map.drop(run, [:last_report, :token])

  defp emit(event, run, measurements) do
    Events.emit([:dspex, :bridge, :coordinator, event], measurements, %{
      optimization_id: run.id,
      session_id: run.session_id,
      var_id: run.var_id,
      optimizer_id: run.optimizer_id,
      best: run.best
    })
  end
end
