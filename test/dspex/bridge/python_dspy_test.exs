defmodule DSPex.Bridge.PythonDSPyTest do
  @moduledoc """
  DSPy programs on the bridge, with the real `dspy` package and its DummyLM: parameters
  read from the calling session at each call, and an optimization loop across the bridge
  under the coordinator's locks.
  """
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{Analytics, CircuitBreaker, OptimizerCoordinator, Python, SessionStore}
  alias DSPex.Bridge.Python.CandidateSearch

  @moduletag timeout: 120_000

  doctest CandidateSearch

  @devset [
    {%{question: "capital of France?"}, %{answer: "Paris"}},
    {%{question: "capital of Italy?"}, %{answer: "Rome"}},
    {%{question: "capital of Spain?"}, %{answer: "Madrid"}}
  ]

  setup do
    pool = python_pool!(size: 2, modules: ["fault_tools", "dspy_tools"], health_interval_ms: 60_000)
    :ok = CircuitBreaker.start_breaker(pool, failure_threshold: 1_000)
    on_exit(fn -> CircuitBreaker.delete_breaker(pool) end)
    s = session!()
    assert {:ok, %{"registered" => registered}} = call(s, "qa.register_parameters", %{}, pool)

    assert Enum.sort(registered) ==
             ~w(qa.demos qa.instructions qa.max_tokens qa.model qa.temperature)

    {:ok, pool: pool, session: s}
  end

  defp call(s, tool, args, pool), do: Python.call(s, tool, args, pool: pool, timeout: 20_000)

  defp demos(pairs), do: Enum.map(pairs, fn {q, a} -> %{question: q, answer: a} end)

  # The candidate whose demos answer the whole dev set right.
  defp right_candidate do
    %{
      "qa.instructions" => "Name the capital city.",
      "qa.demos" =>
        demos([
          {"capital of France?", "Paris"},
          {"capital of Italy?", "Rome"},
          {"capital of Spain?", "Madrid"}
        ])
    }
  end

  test "a DSPy program runs with the instructions, demos and LM settings of the session",
       %{pool: pool, session: s} do
    assert {:ok, %{type: :json, value: [], version: 1}} = SessionStore.get_variable(s, "qa.demos")
    assert {:ok, %{type: :float, value: +0.0}} = SessionStore.get_variable(s, "qa.temperature")

    {:ok, _} = SessionStore.update_variable(s, "qa.demos", demos([{"capital of France?", "Paris"}]))

    assert {:ok, %{"answer" => "Paris"}} = call(s, "qa", %{question: "capital of France?"}, pool)

    # A change in Elixir changes the next Python run.
    {:ok, _} =
      SessionStore.update_variable(s, "qa.demos", demos([{"capital of France?", "Lutetia"}]))

    assert {:ok, %{"answer" => "Lutetia"}} = call(s, "qa", %{question: "capital of France?"}, pool)

    {:ok, _} = SessionStore.update_variable(s, "qa.instructions", "Answer as a Roman would.")
    {:ok, _} = SessionStore.update_variable(s, "qa.temperature", 0.9)
    {:ok, _} = SessionStore.update_variable(s, "qa.model", "dummy-large")
    {:ok, _} = SessionStore.update_variable(s, "qa.max_tokens", 64)

    assert {:ok, trace} = call(s, "qa_trace", %{question: "capital of France?"}, pool)
    assert trace["answer"] == "Lutetia"
    assert trace["system"] =~ "Answer as a Roman would."
    assert %{"model" => "dummy-large", "temperature" => 0.9, "max_tokens" => 64} = trace
    assert trace["versions"]["qa.demos"] == 3

    # The outputs and the usage (by the model that ran) are written back to the session.
    assert {:ok, %{"answer" => "Lutetia"}} = call(s, "qa", %{question: "capital of France?"}, pool)

    assert {:ok, %{value: "Lutetia", type: :json}} = SessionStore.get_variable(s, "qa.last_answer")

    assert {:ok, %{value: %{"dummy-large" => %{"total_tokens" => 0}}}} =
             SessionStore.get_variable(s, "qa.usage")

    # Rollback is a write like any other: the next run follows the old demos.
    {:ok, _} = SessionStore.rollback_variable(s, "qa.demos", 2)
    assert {:ok, %{"answer" => "Paris"}} = call(s, "qa", %{question: "capital of France?"}, pool)

    # Another session's program runs with its own parameters, at the same time.
    other = session!()
    {:ok, _} = call(other, "qa.register_parameters", %{}, pool)

    {:ok, _} =
      SessionStore.update_variable(other, "qa.demos", demos([{"capital of France?", "Paname"}]))

    answers =
      [{s, "Paris"}, {other, "Paname"}]
      |> List.duplicate(10)
      |> List.flatten()
      |> Task.async_stream(
        fn {session, expected} ->
          {call(session, "qa", %{question: "capital of France?"}, pool), expected}
        end,
        max_concurrency: 8,
        timeout: 30_000
      )
      |> Enum.map(fn {:ok, pair} -> pair end)

    assert Enum.all?(answers, fn {{:ok, %{"answer" => a}}, expected} -> a == expected end)
  end

  test "parameters of the wrong shape and programs that fail are clear Python errors",
       %{pool: pool, session: s} do
    :ok = SessionStore.delete_variable(s, "qa.demos")
    {:ok, _} = SessionStore.register_variable(s, "qa.demos", :json, %{not: "a list"})

    assert {:error, {:python, "TypeError", message}} =
             call(s, "qa", %{question: "capital of France?"}, pool)

    assert message =~ "qa.demos"

    {:ok, _} = SessionStore.update_variable(s, "qa.demos", [])
    # DummyLM has no demo to follow: DSPy cannot parse an answer, and says so.
    assert {:error, {:python, "AdapterParseError", _}} =
             call(s, "qa", %{question: "capital of France?"}, pool)

    # The type keeps a demos variable JSON-shaped from Elixir too.
    assert {:error, {:invalid_value, {:expected, :json}}} =
             SessionStore.update_variable(s, "qa.demos", [{:question, "tuple"}])
  end

  test "an optimizer tries candidates under its locks and completes with the best",
       %{pool: pool, session: s} do
    candidates = [
      %{
        "qa.instructions" => "Guess.",
        "qa.demos" =>
          demos([
            {"capital of France?", "Paris"},
            {"capital of Italy?", "Milan"},
            {"capital of Spain?", "Barcelona"}
          ])
      },
      right_candidate(),
      %{
        "qa.instructions" => "Name a large city.",
        "qa.demos" =>
          demos([
            {"capital of France?", "Paris"},
            {"capital of Italy?", "Rome"},
            {"capital of Spain?", "Seville"}
          ])
      }
    ]

    test = self()

    # The first optimizer pauses after its first candidate, so that we can look at what
    # others meet while it holds the locks.
    first =
      Task.async(fn ->
        CandidateSearch.run(s, "qa",
          pool: pool,
          candidates: candidates,
          devset: @devset,
          optimizer_id: "first",
          call_timeout: 20_000,
          on_progress: fn %{iteration: i} = p ->
            send(test, {:progress, p})
            if i == 1, do: receive(do: (:go -> :ok))
          end
        )
      end)

    assert_receive {:progress, %{iteration: 1, score: score1}}, 30_000
    assert_in_delta score1, 1 / 3, 1.0e-9

    # Held: a second optimizer that will not wait is refused, a writer without the token too.
    assert {:error, {:lock_held_by, "first"}} =
             CandidateSearch.run(s, "qa",
               pool: pool,
               candidates: candidates,
               devset: @devset,
               optimizer_id: "second",
               conflict: :abort
             )

    assert {:error, {:locked_by, "first"}} =
             SessionStore.update_variable(s, "qa.instructions", "sneaky")

    # One that waits gets the locks when the first is done.
    second =
      Task.async(fn ->
        result =
          CandidateSearch.run(s, "qa",
            pool: pool,
            candidates: [hd(candidates)],
            devset: @devset,
            optimizer_id: "waiter",
            lock_timeout: 60_000,
            call_timeout: 20_000
          )

        {result, System.monotonic_time()}
      end)

    eventually(fn ->
      match?(
        {:ok, %{waiters: [_ | _]}},
        OptimizerCoordinator.get_lock_info("qa.demos", session_id: s)
      )
    end)

    send(first.pid, :go)
    assert {:ok, result} = Task.await(first, 60_000)
    first_done = System.monotonic_time()

    assert result.best == Enum.at(candidates, 1)
    assert result.score == 1.0
    assert [_, 1.0, _] = result.scores
    assert_in_delta Enum.at(result.scores, 2), 2 / 3, 1.0e-9

    assert {:ok, %{status: :completed, best: 1.0, best_iteration: 2}} =
             OptimizerCoordinator.get_optimization_status(result.optimization_id)

    # Analytics saw the Python calls and the run's progress.
    now = System.system_time(:millisecond)

    assert {:ok, calls} =
             Analytics.get_metrics(:python_call_latency_seconds, now - 60_000, now, :count,
               labels: %{tool: "qa", outcome: :ok}
             )

    assert calls >= 9

    assert {:ok, 1.0} =
             Analytics.get_metrics(:optimization_best, now - 60_000, now, :last,
               labels: %{optimizer: "first"}
             )

    # The waiter ran after the first completed and wrote its (only) candidate.
    assert {{:ok, %{best: waiter_best}}, waiter_done} = Task.await(second, 60_000)
    assert waiter_done > first_done
    assert waiter_best == hd(candidates)

    # Every candidate went through SessionStore: the history has them in order (newest
    # first: the waiter's one candidate, then the first's final write and its three tries).
    {:ok, history} = SessionStore.get_history(s, "qa.instructions")

    assert Enum.take(Enum.map(history, & &1.value), 5) ==
             [
               "Guess.",
               "Name the capital city.",
               "Name a large city.",
               "Name the capital city.",
               "Guess."
             ]

    assert {:ok, %{value: "Guess."}} = SessionStore.get_variable(s, "qa.instructions")
    refute OptimizerCoordinator.locked?("qa.demos", session_id: s)
  end

  test "an optimizer that dies releases its locks; a failed search restores the variables",
       %{pool: pool, session: s} do
    good = right_candidate()

    test = self()

    {pid, ref} =
      spawn_monitor(fn ->
        CandidateSearch.run(s, "qa",
          pool: pool,
          candidates: [good, good],
          devset: @devset,
          optimizer_id: "doomed",
          call_timeout: 20_000,
          on_progress: fn _ ->
            send(test, :paused)
            Process.sleep(:infinity)
          end
        )
      end)

    assert_receive :paused, 30_000
    assert OptimizerCoordinator.locked?("qa.demos", session_id: s)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}
    eventually(fn -> not OptimizerCoordinator.locked?("qa.demos", session_id: s) end)
    eventually(fn -> not OptimizerCoordinator.locked?("qa.instructions", session_id: s) end)

    # A search whose program fails (no demo to follow) puts the variables back as they were.
    {:ok, before_demos} = SessionStore.get_variable(s, "qa.demos")
    {:ok, before_instructions} = SessionStore.get_variable(s, "qa.instructions")
    bad = %{"qa.instructions" => "No examples.", "qa.demos" => []}

    assert {:error, {:program_failed, {:python, "AdapterParseError", _}}} =
             CandidateSearch.run(s, "qa",
               pool: pool,
               candidates: [bad],
               devset: @devset,
               call_timeout: 20_000
             )

    assert {:ok, %{value: v}} = SessionStore.get_variable(s, "qa.demos")
    assert v == before_demos.value
    assert {:ok, %{value: i}} = SessionStore.get_variable(s, "qa.instructions")
    assert i == before_instructions.value
    refute OptimizerCoordinator.locked?("qa.demos", session_id: s)

    # With on_call_error: :score_zero the same candidate scores 0 and the search goes on.
    assert {:ok, %{best: ^good, scores: [+0.0, 1.0]}} =
             CandidateSearch.run(s, "qa",
               pool: pool,
               candidates: [bad, good],
               devset: @devset,
               on_call_error: :score_zero,
               call_timeout: 20_000
             )
  end

  test "examples/dspy_optimize.exs runs offline" do
    output = ExUnit.CaptureIO.capture_io(fn -> Code.eval_file("examples/dspy_optimize.exs") end)
    assert output =~ "a second optimizer meanwhile -> {:error, {:lock_held_by, \"example_search\"}}"
    assert output =~ "best candidate: Name the capital city of the country. (score 1.0)"
    assert output =~ ~s(the program now answers "capital of Italy?" with Rome)
    assert output =~ "run completed: best at iteration 2 of 3"
  end

  test "bad options are refused before anything is locked", %{session: s} do
    ok = [candidates: [%{"qa.instructions" => "x"}], devset: @devset]

    for {opts, reason} <- [
          {[candidates: [], devset: @devset], {:invalid_option, {:candidates, []}}},
          {[candidates: [%{}], devset: @devset], {:invalid_option, {:candidates, [%{}]}}},
          {[candidates: [%{"a" => 1}], devset: []], {:invalid_option, {:devset, []}}},
          {[candidates: [%{"a" => 1}], devset: [:x]], {:invalid_option, {:devset, [:x]}}},
          {ok ++ [metric: :exact], {:invalid_option, {:metric, :exact}}},
          {ok ++ [conflict: :fight], {:invalid_option, {:conflict, :fight}}},
          {ok ++ [colour: :blue], {:invalid_option, {:unknown, :colour}}},
          {[candidates: [%{"missing" => 1}], devset: @devset],
           {"missing", {:variable_not_found, "missing"}}}
        ] do
      assert {:error, ^reason} = CandidateSearch.run(s, "qa", opts)
    end

    assert {:error, {:invalid_option, {:not_a_keyword_list, :nope}}} =
             CandidateSearch.run(s, "qa", :nope)

    refute OptimizerCoordinator.locked?("qa.instructions", session_id: s)
  end
end
