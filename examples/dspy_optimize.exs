# An optimization loop across the bridge: an Elixir optimizer tunes a DSPy program's
# instructions and demos (session variables) while holding the coordinator's locks on them,
# scoring each candidate on a dev set by calling the program in Python.
#
#   make python        # once: the Python environment with DSPy
#   DSPEX_PYTHON=_build/dspex_python/bin/python mix run examples/dspy_optimize.exs
#
# Offline by default (DSPy's DummyLM, see priv/demo/dspy_qa.py); DSPEX_DSPY_MODEL picks a
# real LM.
alias DSPex.Bridge.{Analytics, CircuitBreaker, OptimizerCoordinator, Python, PythonWorker}
alias DSPex.Bridge.SessionStore
alias DSPex.Bridge.Python.CandidateSearch

pool = :dspy_example
session = "dspy_example_#{System.unique_integer([:positive])}"
programs = Path.join(:code.priv_dir(:dspex_bridge), "demo")

{:ok, _} = PythonWorker.start_pool(pool, size: 2, modules: ["dspy_qa"], python_path: [programs])
:ok = CircuitBreaker.start_breaker(pool, failure_threshold: 50)
{:ok, _} = SessionStore.create_session(session)

try do
  # The program's parameters become variables of the session, from the program as it is.
  {:ok, %{"registered" => names}} =
    Python.call(session, "qa.register_parameters", %{}, pool: pool, timeout: 30_000)

  IO.puts("parameters in #{session}: #{Enum.join(Enum.sort(names), ", ")}")

  demos = fn answers ->
    for {q, a} <- answers, do: %{question: "capital of #{q}?", answer: a}
  end

  candidates = [
    %{
      "qa.instructions" => "Name a famous city of the country.",
      "qa.demos" => demos.([{"France", "Paris"}, {"Italy", "Milan"}, {"Spain", "Barcelona"}])
    },
    %{
      "qa.instructions" => "Name the capital city of the country.",
      "qa.demos" => demos.([{"France", "Paris"}, {"Italy", "Rome"}, {"Spain", "Madrid"}])
    },
    %{
      "qa.instructions" => "Name the largest city of the country.",
      "qa.demos" => demos.([{"France", "Paris"}, {"Italy", "Rome"}, {"Spain", "Valencia"}])
    }
  ]

  devset =
    for {q, a} <- [{"France", "Paris"}, {"Italy", "Rome"}, {"Spain", "Madrid"}],
        do: {%{question: "capital of #{q}?"}, %{answer: a}}

  main = self()

  optimizer =
    Task.async(fn ->
      CandidateSearch.run(session, "qa",
        pool: pool,
        candidates: candidates,
        devset: devset,
        optimizer_id: "example_search",
        call_timeout: 30_000,
        on_progress: fn %{iteration: i, score: score} ->
          IO.puts("  candidate #{i}: score #{Float.round(score, 3)}")
          # Hold on after the first candidate until the main process has looked around.
          if i == 1 do
            send(main, :first_scored)
            receive do: (:continue -> :ok)
          end
        end
      )
    end)

  receive do: (:first_scored -> :ok)

  rival =
    CandidateSearch.run(session, "qa",
      pool: pool,
      candidates: [hd(candidates)],
      devset: devset,
      optimizer_id: "rival",
      conflict: :abort
    )

  IO.puts("a second optimizer meanwhile -> #{inspect(rival)}")
  sneaky = SessionStore.update_variable(session, "qa.instructions", "Say anything.")
  IO.puts("a write without the token -> #{inspect(sneaky)}")
  send(optimizer.pid, :continue)

  {:ok, result} = Task.await(optimizer, 120_000)
  IO.puts("best candidate: #{result.best["qa.instructions"]} (score #{result.score})")

  {:ok, run} = OptimizerCoordinator.get_optimization_status(result.optimization_id)
  IO.puts("run #{run.status}: best at iteration #{run.best_iteration} of #{run.iteration}")

  {:ok, %{"answer" => answer}} =
    Python.call(session, "qa", %{question: "capital of Italy?"}, pool: pool)

  IO.puts("the program now answers \"capital of Italy?\" with #{answer}")

  now = System.system_time(:millisecond)
  labels = [labels: %{pool: pool, tool: "qa"}]

  figures =
    for agg <- [:count, :p50, :p95] do
      {:ok, v} = Analytics.get_metrics(:python_call_latency_seconds, now - 60_000, now, agg, labels)
      if agg == :count, do: "#{trunc(v)} calls", else: "#{agg} #{Float.round(v * 1000, 2)} ms"
    end

  IO.puts("Python call latency (Analytics): #{Enum.join(figures, ", ")}")

  {:ok, best} =
    Analytics.get_metrics(:optimization_best, now - 60_000, now, :last,
      labels: %{optimizer: "example_search"}
    )

  IO.puts("optimization_best gauge: #{best}")
after
  SessionStore.delete_session(session)
  CircuitBreaker.delete_breaker(pool)
  PythonWorker.stop_pool(pool)
end
