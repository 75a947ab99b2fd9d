defmodule DSPex.Bridge.Python do
  @moduledoc """
  Calls into Python for a session, hardened: `call/4` goes through the named circuit
  breaker (with its bulkhead) to a worker of a `DSPex.Bridge.PythonWorker` pool, with
  optional retry. The tool's `ctx` acts as `session_id`, and as nothing else: everything it
  reads or writes goes through that session's SessionStore path (constraints, versions,
  access control, locks). The calls of one session go to the same worker while it lives.

      {:ok, _} = DSPex.Bridge.PythonWorker.start_pool(:python, modules: ["my_tools"], size: 2)
      :ok = DSPex.Bridge.CircuitBreaker.start_breaker(:python, failure_threshold: 5)
      {:ok, %{"answer" => 42}} =
        DSPex.Bridge.Python.call("session_1", "echo", %{value: %{answer: 42}}, pool: :python)

  The call goes: rate limit (`rate_limit:` a `DSPex.Bridge.RateLimiter` name, per session)
  → bulkhead and breaker → worker.

  Options: `pool:` (default `:python`), `breaker:` (default the pool's name), `timeout:` ms
  (default 5_000), `retry:` attempts (default 1: no retry), `fallback:` (see
  `DSPex.Bridge.CircuitBreaker.call/3`). With `retry:`, the attempts form one breaker call
  (one outcome), and no attempt is made while the breaker is open.
  """

  alias DSPex.Bridge.{Analytics, CircuitBreaker, Options, PythonWorker, RateLimiter, SessionStore}
  import DSPex.Bridge.Options, only: [is_id: 1]

  @typedoc "What a call returns: the tool's value, an error, or a breaker's fallback."
  @type result :: {:ok, term()} | {:error, term()} | {:fallback, term(), term()}

  @spec call(SessionStore.session_id(), String.t() | atom(), map(), keyword()) :: result()
  def call(session_id, tool, args, opts \\ [])

  def call(session_id, _tool, _args, _opts) when not is_id(session_id),
    do: {:error, {:invalid_session_id, session_id}}

  def call(session_id, tool, args, opts) do
    spec = %{
      pool: fn _ -> true end,
      breaker: &(is_atom(&1) or is_binary(&1)),
      timeout: &Options.pos_ms?/1,
      retry: &Options.pos_integer?/1,
      fallback: fn _ -> true end,
      rate_limit: &(is_atom(&1) or is_binary(&1))
    }

    with {:ok, o} <- Options.take(opts, spec),
         :ok <- rate_limit(Map.get(o, :rate_limit), session_id) do
      pool = Map.get(o, :pool, :python)
      breaker = Map.get(o, :breaker, pool)
      timeout = Map.get(o, :timeout, 5_000)
      work = fn -> timed_call(pool, session_id, tool, args, timeout) end
      call_opts = Enum.filter([fallback: Map.get(o, :fallback, :none)], &(elem(&1, 1) != :none))

      case Map.get(o, :retry, 1) do
        1 -> CircuitBreaker.call(breaker, work, call_opts)
        attempts -> CircuitBreaker.retry(work, [attempts: attempts, breaker: breaker] ++ call_opts)
      end
    end
  end

  # Every attempt's latency goes to Analytics: python_call_latency_seconds{pool, tool, outcome}.
  defp timed_call(pool, session_id, tool, args, timeout) do
    started = System.monotonic_time()
    result = PythonWorker.call_for(pool, session_id, tool, args, timeout)

    seconds =
      System.convert_time_unit(System.monotonic_time() - started, :native, :nanosecond) / 1.0e9

    outcome = if match?({:ok, _}, result), do: :ok, else: :error
    labels = %{pool: Analytics.label(pool), tool: Analytics.label(tool), outcome: outcome}
    Analytics.observe(:python_call_latency_seconds, seconds, labels)
    result
  end

  defp rate_limit(nil, _session_id), do: :ok
  defp rate_limit(limiter, session_id), do: RateLimiter.check(limiter, session_id)

  @doc """
  Reads a Python-backed variable: calls `tool` with `args` through `call/4`, stores the
  result as the variable's new value and returns the variable. When Python cannot answer
  (breaker open, timeout, error), returns the last known good value with
  `stale: {:fallback, reason}`; the stored variable is not changed.
  """
  @spec fetch_variable(term(), term(), String.t() | atom(), term(), keyword()) ::
          {:ok, DSPex.Bridge.Variable.t()} | {:error, term()}
  def fetch_variable(session_id, name, tool, args, opts \\ []) do
    with {:ok, current} <- SessionStore.get_variable(session_id, name) do
      case call(session_id, tool, args, opts) do
        {:ok, value} ->
          case SessionStore.update_variable(session_id, name, value) do
            {:ok, var} -> {:ok, var}
            {:error, reason} -> {:ok, %{current | stale: {:fallback, reason}}}
          end

        {:error, reason} ->
          {:ok, %{current | stale: {:fallback, reason}}}

        {:fallback, _value, reason} ->
          {:ok, %{current | stale: {:fallback, reason}}}
      end
    end
  end
end
