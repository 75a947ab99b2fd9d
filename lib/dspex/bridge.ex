defmodule DSPex.Bridge do
  @moduledoc """
  Calls into Python, hardened: `call/4` goes through the named circuit breaker (with its
  bulkhead) to a worker of a `DSPex.Bridge.PythonWorker` pool, with optional retry.

      {:ok, _} = DSPex.Bridge.PythonWorker.start_pool(:python, size: 2)
      :ok = DSPex.Bridge.CircuitBreaker.start_breaker(:python, failure_threshold: 5)
      {:ok, %{"answer" => 42}} =
        DSPex.Bridge.call("session_1", "echo", %{value: %{answer: 42}}, pool: :python)

  Options: `pool:` (default `:python`), `breaker:` (default the pool's name), `timeout:` ms
  (default 5_000), `retry:` attempts (default 1: no retry), `fallback:` (see
  `DSPex.Bridge.CircuitBreaker.call/3`). With `retry:`, the attempts form one breaker call
  (one outcome), and no attempt is made while the breaker is open.
  """

  alias DSPex.Bridge.{CircuitBreaker, Options, PythonWorker}

  @spec call(term(), String.t() | atom(), term(), keyword()) :: term()
  def call(_session_id, tool, args, opts \\ []) do
    spec = %{
      pool: fn _ -> true end,
      breaker: &(is_atom(&1) or is_binary(&1)),
      timeout: &Options.pos_integer?/1,
      retry: &Options.pos_integer?/1,
      fallback: fn _ -> true end
    }

    with {:ok, o} <- Options.take(opts, spec) do
      pool = Map.get(o, :pool, :python)
      breaker = Map.get(o, :breaker, pool)
      timeout = Map.get(o, :timeout, 5_000)
      work = fn -> PythonWorker.call(pool, tool, args, timeout) end
      call_opts = Enum.filter([fallback: Map.get(o, :fallback, :none)], &(elem(&1, 1) != :none))

      case Map.get(o, :retry, 1) do
        1 -> CircuitBreaker.call(breaker, work, call_opts)
        attempts -> CircuitBreaker.retry(work, [attempts: attempts, breaker: breaker] ++ call_opts)
      end
    end
  end
end
