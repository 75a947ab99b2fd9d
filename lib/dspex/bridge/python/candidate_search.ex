defmodule DSPex.Bridge.Python.CandidateSearch do
  @moduledoc """
  An optimizer for a Python program's parameters: it holds the optimizer locks on the
  parameter variables, tries each candidate by writing it with the locks' fencing tokens,
  scores it on a dev set by calling the program through the bridge, and completes with the
  best candidate.

  The program is a bridge tool whose parameters are session variables — a DSPy program
  served with `dspex_bridge.dspy.program_tool` reads its instructions, demos and LM settings
  from the calling session at each call:

      candidates = [
        %{"qa.instructions" => "Answer briefly.", "qa.demos" => demos_a},
        %{"qa.instructions" => "Answer with one word.", "qa.demos" => demos_b}
      ]

      devset = [{%{question: "2+2?"}, %{"answer" => "4"}}, {%{question: "3+3?"}, %{"answer" => "6"}}]

      {:ok, result} =
        DSPex.Bridge.Python.CandidateSearch.run(session, "qa",
          pool: :dspy, candidates: candidates, devset: devset)

      result.best     # the winning candidate, now the variables' values
      result.score    # its mean score on the dev set
      result.scores   # every candidate's score, in order

  While it runs, another optimizer asking for these variables waits or is refused (by its
  own `conflict:`), and writers without the token get `{:error, {:locked_by, id}}`. Each
  candidate is an iteration of one `OptimizerCoordinator` run (progress events, the
  `optimization_iteration`/`optimization_best` gauges, status). Every program call goes
  through `DSPex.Bridge.Python.call/4` (breaker, deadline, `python_call_latency_seconds`).

  On an error (a refused write, a program that fails, a lost lock) the variables get back
  the values they had before the search, the run ends as failed and the locks are released:
  `{:error, reason}`. If the searching process dies, its locks are released by the
  coordinator's monitor; the variables keep the candidate written last (their history has
  the earlier values).

  ## Options

  * `candidates:` (required) a non-empty list of maps of variable name to value; the
    variables are the union of their keys and must exist in the session.
  * `devset:` (required) a non-empty list of `{inputs, expected}` (or maps with `:inputs`
    and `:expected`).
  * `pool:` the Python pool (default `:python`); `call_timeout:` ms per call (5_000);
    `breaker:` as in `DSPex.Bridge.Python.call/4`.
  * `metric:` `fn prediction, expected -> number` (default: the fraction of `expected`'s
    fields that the prediction equals, keys compared as text). A call that fails scores 0
    when `on_call_error: :score_zero`; by default (`:abort`) it aborts the search.
  * `optimizer_id:` (default `"candidate_search"`), `conflict:` `:wait` (default), `:abort`
    or `:preempt`, `lock_timeout:` ms to wait for the locks (5_000), `priority:` (0).
  * `on_progress:` `fn %{iteration:, candidate:, score:} -> any` after each candidate.
  """

  alias DSPex.Bridge.{OptimizerCoordinator, Options, Python, SessionStore}

  @type candidate :: %{optional(String.t() | atom()) => term()}
  @type example :: {map(), map()} | %{inputs: map(), expected: map()}
  @type result :: %{
          best: candidate(),
          score: float(),
          scores: [float()],
          optimization_id: String.t(),
          variables: [DSPex.Bridge.Variable.t()]
        }

  @spec run(SessionStore.session_id(), String.t() | atom(), keyword()) ::
          {:ok, result()} | {:error, term()}
  def run(session, program, opts) when is_list(opts) do
    with {:ok, o} <- options(opts),
         {:ok, names} <- variable_names(o.candidates),
         {:ok, before} <- current_values(session, names),
         {:ok, locks} <- lock(session, names, o) do
      tokens = Map.new(locks, &{&1.var_id, &1.token})
      [primary | _] = locks

      case OptimizerCoordinator.start_optimization(primary, objective: {:maximize, :score}) do
        {:ok, id} ->
          search(session, program, o, %{id: id, locks: locks, tokens: tokens, before: before})

        error ->
          release(locks, o.optimizer_id)
          error
      end
    end
  end

  def run(_session, _program, opts), do: {:error, {:invalid_option, {:not_a_keyword_list, opts}}}

  defp search(session, program, o, run) do
    scored =
      o.candidates
      |> Enum.with_index(1)
      |> Enum.reduce_while({:ok, []}, fn {candidate, i}, {:ok, acc} ->
        with {:ok, _} <- write(session, candidate, run.tokens),
             {:ok, score} <- score(session, program, o),
             :ok <- OptimizerCoordinator.report_progress(run.id, i, candidate, %{score: score}) do
          renew(run.locks, o.optimizer_id)
          if o.on_progress, do: o.on_progress.(%{iteration: i, candidate: candidate, score: score})
          {:cont, {:ok, [score | acc]}}
        else
          error -> {:halt, error}
        end
      end)

    with {:ok, reversed} <- scored,
         scores = Enum.reverse(reversed),
         {best, score} = best(o.candidates, scores),
         {:ok, vars} <- finish(session, best, score, List.last(o.candidates), run) do
      release(run.locks, o.optimizer_id)

      {:ok, %{best: best, score: score, scores: scores, optimization_id: run.id, variables: vars}}
    else
      {:error, reason} = error ->
        # Back to where the search started, with the tokens we still hold.
        _ = SessionStore.update_variables(session, run.before, lock_tokens: run.tokens)
        _ = OptimizerCoordinator.fail_optimization(run.id, reason)
        release(run.locks, o.optimizer_id)
        error
    end
  end

  # The best candidate is written back (unless it is the one written last); the run's own
  # variable last of all, by completing the run (which writes it with the run's token and
  # releases that lock).
  defp finish(session, best, score, last, run) do
    [primary | _] = run.locks
    others = if best == last, do: %{}, else: Map.delete(best, primary.var_id)

    with {:ok, vars} <- write(session, others, run.tokens),
         {:ok, var} <-
           OptimizerCoordinator.complete_optimization(
             run.id,
             Map.fetch!(best, primary.var_id),
             %{score: score}
           ) do
      {:ok, Enum.sort_by([var | vars], &to_string(&1.name))}
    end
  end

  # The first of equal scores wins: candidates come in the caller's order of preference.
  defp best(candidates, scores) do
    candidates
    |> Enum.zip(scores)
    |> Enum.reduce(fn {c, s}, {_, best_s} = acc -> if s > best_s, do: {c, s}, else: acc end)
  end

  defp write(_session, candidate, _tokens) when map_size(candidate) == 0, do: {:ok, []}

  defp write(session, candidate, tokens) do
    SessionStore.update_variables(session, candidate,
      lock_tokens: Map.take(tokens, Map.keys(candidate))
    )
  end

  defp score(session, program, o) do
    o.devset
    |> Enum.reduce_while({:ok, 0.0}, fn {inputs, expected}, {:ok, sum} ->
      case Python.call(session, program, inputs, o.call_opts) do
        {:ok, prediction} when is_map(prediction) ->
          {:cont, {:ok, sum + o.metric.(prediction, expected)}}

        {:ok, other} ->
          {:halt, {:error, {:not_a_prediction, other}}}

        _failed when o.on_call_error == :score_zero ->
          {:cont, {:ok, sum}}

        {:error, reason} ->
          {:halt, {:error, {:program_failed, reason}}}

        {:fallback, _, reason} ->
          {:halt, {:error, {:program_failed, reason}}}
      end
    end)
    |> case do
      {:ok, sum} -> {:ok, sum / length(o.devset)}
      error -> error
    end
  end

  @doc """
  The default metric: the fraction of `expected`'s fields whose values the prediction
  equals (keys compared as text; string values compared trimmed).

      iex> DSPex.Bridge.Python.CandidateSearch.exact_match(%{"answer" => " 4"}, %{answer: "4"})
      1.0
      iex> DSPex.Bridge.Python.CandidateSearch.exact_match(%{"answer" => "5"}, %{answer: "4"})
      0.0
  """
  @spec exact_match(map(), map()) :: float()
  def exact_match(prediction, expected) when map_size(expected) > 0 do
    hits =
      Enum.count(expected, fn {k, v} ->
        normalize(Map.get(prediction, to_string(k), Map.get(prediction, k))) == normalize(v)
      end)

    hits / map_size(expected)
  end

  def exact_match(_prediction, _expected), do: 0.0

  defp normalize(v) when is_binary(v), do: String.trim(v)
  defp normalize(v) when is_atom(v) and v not in [nil, true, false], do: Atom.to_string(v)
  defp normalize(v), do: v

  # ---------------------------------------------------------------------------------------

  defp lock(session, names, o) do
    OptimizerCoordinator.acquire_locks(names, o.optimizer_id,
      session_id: session,
      caller: session,
      conflict_resolution: o.conflict,
      timeout: o.lock_timeout,
      priority: o.priority
    )
  end

  defp renew(locks, optimizer_id) do
    for l <- locks,
        do: OptimizerCoordinator.renew_lock(l.var_id, optimizer_id, session_id: l.session_id)
  end

  defp release(locks, optimizer_id) do
    for l <- locks,
        do: OptimizerCoordinator.release_lock(l.var_id, optimizer_id, session_id: l.session_id)

    :ok
  end

  defp current_values(session, names) do
    Enum.reduce_while(names, {:ok, %{}}, fn name, {:ok, acc} ->
      case SessionStore.get_variable(session, name) do
        {:ok, var} -> {:cont, {:ok, Map.put(acc, name, var.value)}}
        {:error, reason} -> {:halt, {:error, {name, reason}}}
      end
    end)
  end

  defp variable_names(candidates) do
    {:ok, candidates |> Enum.flat_map(&Map.keys/1) |> Enum.uniq() |> Enum.sort()}
  end

  @defaults %{
    pool: :python,
    call_timeout: 5_000,
    breaker: nil,
    metric: &__MODULE__.exact_match/2,
    on_call_error: :abort,
    optimizer_id: "candidate_search",
    conflict: :wait,
    lock_timeout: 5_000,
    priority: 0,
    on_progress: nil
  }

  defp options(opts) do
    with true <- Keyword.keyword?(opts) || {:error, {:invalid_option, {:not_a_keyword_list, opts}}},
         {:ok, o} <- known(opts),
         {:ok, candidates} <- candidates(Keyword.get(opts, :candidates)),
         {:ok, devset} <- devset(Keyword.get(opts, :devset)),
         :ok <- check(o) do
      call_opts = [pool: o.pool, timeout: o.call_timeout]
      call_opts = if o.breaker, do: [breaker: o.breaker] ++ call_opts, else: call_opts
      {:ok, Map.merge(o, %{candidates: candidates, devset: devset, call_opts: call_opts})}
    end
  end

  defp known(opts) do
    case Enum.find(
           Keyword.keys(opts),
           &(not Map.has_key?(@defaults, &1) and &1 not in [:candidates, :devset])
         ) do
      nil -> {:ok, Map.merge(@defaults, Map.new(Keyword.drop(opts, [:candidates, :devset])))}
      key -> {:error, {:invalid_option, {:unknown, key}}}
    end
  end

  defp check(o) do
    cond do
      not is_function(o.metric, 2) ->
        bad(:metric, o.metric)

      o.on_call_error not in [:abort, :score_zero] ->
        bad(:on_call_error, o.on_call_error)

      o.conflict not in [:wait, :abort, :preempt] ->
        bad(:conflict, o.conflict)

      not (is_integer(o.call_timeout) and o.call_timeout > 0) ->
        bad(:call_timeout, o.call_timeout)

      not (is_integer(o.lock_timeout) and o.lock_timeout >= 0) ->
        bad(:lock_timeout, o.lock_timeout)

      not is_integer(o.priority) ->
        bad(:priority, o.priority)

      not (is_nil(o.on_progress) or is_function(o.on_progress, 1)) ->
        bad(:on_progress, o.on_progress)

      not (is_binary(o.optimizer_id) or is_atom(o.optimizer_id)) ->
        bad(:optimizer_id, o.optimizer_id)

      true ->
        :ok
    end
  end

  defp candidates([_ | _] = list) do
    if Options.proper_list?(list) and Enum.all?(list, &(is_map(&1) and map_size(&1) > 0)),
      do: {:ok, list},
      else: bad(:candidates, list)
  end

  defp candidates(other), do: bad(:candidates, other)

  defp devset([_ | _] = list) do
    if Options.proper_list?(list), do: examples(list), else: bad(:devset, list)
  end

  defp devset(other), do: bad(:devset, other)

  defp examples(list) do
    examples =
      Enum.map(list, fn
        {inputs, expected} when is_map(inputs) and is_map(expected) ->
          {inputs, expected}

        %{inputs: inputs, expected: expected} when is_map(inputs) and is_map(expected) ->
          {inputs, expected}

        _ ->
          nil
      end)

    if nil in examples, do: bad(:devset, list), else: {:ok, examples}
  end

  defp bad(key, value), do: {:error, {:invalid_option, {key, value}}}
end
