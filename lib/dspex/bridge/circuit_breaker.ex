defmodule DSPex.Bridge.CircuitBreaker do
  @moduledoc """
  Named circuit breakers, so a sick dependency (a Python worker) cannot drag the BEAM down.

  The state machine lives in the Rust core (`dspex_core::breaker`): `:closed`, `:open`,
  `:half_open`, plus manual `:forced_open` and `:disabled`. No process sits on the call
  path: `call/3` asks the breaker (a NIF call), runs the function, and reports the outcome.

  ## Options of `start_breaker/2`

  | option                | meaning                                                        | default   |
  |-----------------------|----------------------------------------------------------------|-----------|
  | `:failure_threshold`  | trip after this many failures in a row (used unless `:window`) | `5`       |
  | `:window`             | `{:count, n}` (last n calls, n ≤ 1,000,000) or `{:time, ms}` (last ms) | —  |
  | `:min_calls`          | calls in the window before any rate is judged                  | `10`      |
  | `:failure_rate`       | trip when failures / calls ≥ this (0.0..1.0)                   | `0.5`     |
  | `:slow_call_ms`       | a call at least this long is slow                              | `10_000`  |
  | `:slow_rate`          | trip when slow / calls ≥ this; `nil` ignores slowness          | `nil`     |
  | `:open_timeout_ms`    | wait in `:open` after the first trip                           | `30_000`  |
  | `:max_open_timeout_ms`| the wait doubles per further trip (`:backoff`) up to this      | `300_000` |
  | `:backoff`            | wait multiplier per trip                                       | `2.0`     |
  | `:jitter`             | the wait is shortened by up to this fraction                   | `0.2`     |
  | `:half_open_calls`    | concurrent probes in `:half_open`; this many successes close   | `3`       |
  | `:max_half_open_ms`   | longest stay in `:half_open` before reopening                  | `60_000`  |
  | `:max_concurrent`     | bulkhead: calls running at once; more are rejected at once     | `:infinity` |

  Every time is in milliseconds, at most `4_294_967_295` (the VM's timer limit); counts are
  at most `4_294_967_295`. A value out of range is `{:error, {:invalid_option, {key, value}}}`.

  ## Results of `call/3`

  * the function's own result when it returns (`:ok`, `{:ok, v}`, `{:error, r}`, ...);
  * `{:error, {:exception, e}}`, `{:error, {:exit, reason}}`, `{:error, {:throw, v}}` when it
    raises, exits or throws, `{:error, :timeout}` past `timeout:`;
  * `{:error, :circuit_open}` when rejected (nothing ran), `{:error, :bulkhead_full}`;
  * with `fallback:` (a value or a function of the error), a failed or rejected call returns
    `{:fallback, value, original_error}`: the original error is never hidden.

  `classify:` decides what counts: a function of the result (or of `{:exception, e}`,
  `{:exit, r}`, `{:throw, v}`, `:timeout`) returning `:success`, `:failure` or `:ignored`.
  By default `{:error, _}`, `:error`, raises, exits, throws and timeouts are failures.

  ## Events

  `[:dspex, :bridge, :breaker, :state_change]` (`from`, `to`, `reason`), `:rejected`,
  `:call` (`duration_us`, `outcome`).

  ## Example

      iex> alias DSPex.Bridge.CircuitBreaker
      iex> :ok = CircuitBreaker.start_breaker(:doc_python, failure_threshold: 2, open_timeout_ms: 60_000)
      iex> CircuitBreaker.call(:doc_python, fn -> {:error, :boom} end)
      {:error, :boom}
      iex> CircuitBreaker.call(:doc_python, fn -> raise "down" end)
      {:error, {:exception, %RuntimeError{message: "down"}}}
      iex> CircuitBreaker.state(:doc_python)
      {:ok, :open}
      iex> CircuitBreaker.call(:doc_python, fn -> :never_runs end, fallback: :cached)
      {:fallback, :cached, :circuit_open}
      iex> CircuitBreaker.delete_breaker(:doc_python)
      :ok
  """

  alias DSPex.Bridge.{Events, Native, Options}

  @table :dspex_bridge_breakers
  @ms 1_000_000

  @type name :: atom() | String.t()
  @type outcome :: :success | :failure | :ignored

  @typedoc """
  What `call/3` returns: the function's own result `r`, an error for a failure the breaker
  saw or a rejection, or a fallback carrying the original error (see "Results of `call/3`").
  """
  @type result(r) ::
          r
          | {:error,
             :circuit_open
             | :bulkhead_full
             | :timeout
             | {:exception, Exception.t()}
             | {:exit, term()}
             | {:throw, term()}
             | term()}
          | {:fallback, term(), term()}

  @doc """
  A child spec: `{DSPex.Bridge.CircuitBreaker, name: name, failure_threshold: ...}` installs
  the breaker while the child runs and removes it when it stops.
  """
  def child_spec(:system),
    do: DSPex.Bridge.TableOwner.child_spec({@table, [:set, read_concurrency: true]})

  def child_spec(opts),
    do: DSPex.Bridge.Installation.named_child_spec(__MODULE__, opts, :delete_breaker)

  @doc false
  def install(name, opts) do
    with :ok <- start_breaker(name, opts), do: {:ok, name}
  end

  # ---------------------------------------------------------------------------------------
  # lifecycle

  @doc """
  Creates a named breaker (see the options above). Starting a breaker that exists with the
  same settings is `:ok` (installs are idempotent, as `fuse:install/2`); with other settings
  it is `{:error, {:already_started_with_other_options, name}}`.
  """
  @spec start_breaker(name(), keyword()) :: :ok | {:error, term()}
  def start_breaker(name, opts \\ [])

  def start_breaker(name, opts) when is_atom(name) or is_binary(name) do
    with {:ok, o} <- Options.take(opts, option_spec()),
         {:ok, config} <- config(o),
         {:ok, handle} <- Native.breaker_new(config) do
      limit = Map.get(o, :max_concurrent, :infinity)
      # The settings without the jitter's random seed (the config's last element).
      settings = {Tuple.delete_at(config, tuple_size(config) - 1), limit}

      # The breaker row is what every call reads; the settings row is read only here.
      DSPex.Bridge.Installation.claim(@table, name, settings, fn ->
        :ets.insert(@table, {name, handle, limit, :atomics.new(1, signed: true)})
      end)
    end
  end

  def start_breaker(name, _opts), do: {:error, {:invalid_name, name}}

  @doc "Removes a named breaker."
  @spec delete_breaker(name()) :: :ok | {:error, term()}
  def delete_breaker(name) do
    with {:ok, _} <- lookup(name) do
      :ets.delete(@table, name)
      :ets.delete(@table, {:settings, name})
      :ok
    end
  end

  # Bounds of the Rust core (`dspex_core::breaker`): counts are u32, a count window holds
  # at most 1,000,000 calls; times are at most Options.max_ms/0.
  @max_u32 4_294_967_295
  @max_count_window 1_000_000

  defp option_spec do
    rate = &(is_number(&1) and &1 >= 0 and &1 <= 1)
    count = &Options.int_in?(&1, 1, @max_u32)

    %{
      failure_threshold: count,
      window: fn
        {:count, n} -> Options.int_in?(n, 1, @max_count_window)
        {:time, ms} -> Options.pos_ms?(ms)
        _ -> false
      end,
      min_calls: &Options.int_in?(&1, 0, @max_u32),
      failure_rate: rate,
      slow_call_ms: &Options.ms?/1,
      slow_rate: &(is_nil(&1) or rate.(&1)),
      open_timeout_ms: &Options.ms?/1,
      max_open_timeout_ms: &Options.ms?/1,
      backoff: &(is_number(&1) and &1 >= 1 and &1 <= 1.0e6),
      jitter: rate,
      half_open_calls: count,
      max_half_open_ms: &Options.pos_ms?/1,
      max_concurrent: &(&1 == :infinity or Options.int_in?(&1, 1, @max_u32))
    }
  end

  defp config(o) do
    min_calls = Map.get(o, :min_calls, 10)

    window =
      case Map.get(o, :window) do
        nil -> {:consecutive, Map.get(o, :failure_threshold, 5)}
        {:count, n} -> {:count, n, min_calls}
        {:time, ms} -> {:time, ms * @ms, 10, min_calls}
      end

    open = Map.get(o, :open_timeout_ms, 30_000)
    max_open = Map.get(o, :max_open_timeout_ms, max(300_000, open))

    if max_open < open do
      {:error, {:invalid_option, {:max_open_timeout_ms, max_open}}}
    else
      {:ok,
       {window, Map.get(o, :failure_rate, 0.5) * 1.0, maybe_float(Map.get(o, :slow_rate)),
        Map.get(o, :slow_call_ms, 10_000) * @ms, open * @ms, Map.get(o, :backoff, 2.0) * 1.0,
        max_open * @ms, Map.get(o, :jitter, 0.2) * 1.0, Map.get(o, :half_open_calls, 3),
        Map.get(o, :max_half_open_ms, 60_000) * @ms, :erlang.phash2({make_ref(), self()})}}
    end
  end

  defp maybe_float(nil), do: nil
  defp maybe_float(x), do: x * 1.0

  # ---------------------------------------------------------------------------------------
  # calls

  @doc """
  Runs `fun` through the breaker. Options: `timeout:` (ms or `:infinity`, default
  `:infinity`: the function runs in the caller), `fallback:`, `classify:`.
  """
  @spec call(name(), (() -> r), keyword()) :: result(r) when r: term()
  def call(name, fun, opts \\ [])

  def call(name, fun, opts) when is_function(fun, 0) do
    spec = %{
      timeout: &Options.timeout?/1,
      fallback: fn _ -> true end,
      classify: &is_function(&1, 1)
    }

    with {:ok, o} <- Options.take(opts, spec),
         {:ok, {handle, limit, running}} <- lookup(name) do
      case enter(limit, running) do
        :ok ->
          try do
            guarded(name, handle, fun, o)
          after
            :atomics.sub(running, 1, 1)
          end

        error ->
          Events.emit([:dspex, :bridge, :breaker, :rejected], %{}, %{
            name: name,
            reason: :bulkhead_full
          })

          fallback(error, o)
      end
    end
  end

  def call(_name, fun, _opts), do: {:error, {:invalid_function, fun}}

  defp enter(:infinity, _running), do: :ok

  defp enter(limit, running) do
    if :atomics.add_get(running, 1, 1) > limit do
      :atomics.sub(running, 1, 1)
      {:error, :bulkhead_full}
    else
      :ok
    end
  end

  defp guarded(name, handle, fun, o) do
    case Native.breaker_allow(handle) do
      {:ok, generation, probe, transitions} ->
        publish(name, transitions)
        start = System.monotonic_time()
        result = run(fun, Map.get(o, :timeout, :infinity))
        duration = System.monotonic_time() - start
        outcome = classify(Map.get(o, :classify), result)
        ns = System.convert_time_unit(duration, :native, :nanosecond)
        publish(name, Native.breaker_record(handle, generation, probe, outcome, ns))
        count_call(name, outcome)

        if Events.enabled?() do
          us = div(ns, 1_000)

          Events.emit([:dspex, :bridge, :breaker, :call], %{duration_us: us}, %{
            name: name,
            outcome: outcome
          })
        end

        if outcome == :failure and Map.has_key?(o, :fallback),
          do: fallback(error_of(result), o),
          else: unwrap(result)

      {:error, reason, transitions} ->
        publish(name, transitions)
        count_call(name, :rejected)
        Events.emit([:dspex, :bridge, :breaker, :rejected], %{}, %{name: name, reason: reason})
        fallback({:error, :circuit_open}, o)
    end
  end

  # Names that are not atoms or strings are counted under "other" (labels are text).
  defp count_call(name, outcome) do
    label = if is_atom(name) or is_binary(name), do: name, else: "other"
    DSPex.Bridge.Analytics.increment(:breaker_calls, 1, %{breaker: label, outcome: outcome})
  end

  defp run(fun, :infinity) do
    {:returned, fun.()}
  rescue
    e -> {:exception, e}
  catch
    :exit, reason -> {:exit, reason}
    :throw, value -> {:throw, value}
  end

  # With a timeout the function runs in its own process, so a hung call can be abandoned
  # (and killed) without blocking or killing the caller.
  defp run(fun, timeout) do
    caller = self()
    tag = make_ref()
    {pid, mon} = spawn_monitor(fn -> send(caller, {tag, run(fun, :infinity)}) end)

    receive do
      {^tag, result} ->
        Process.demonitor(mon, [:flush])
        result

      {:DOWN, ^mon, :process, ^pid, reason} ->
        {:exit, reason}
    after
      timeout ->
        Process.exit(pid, :kill)
        Process.demonitor(mon, [:flush])

        receive do
          {^tag, _} -> :ok
        after
          0 -> :ok
        end

        :timeout
    end
  end

  defp classify(nil, {:returned, value}) do
    case value do
      {:error, _} -> :failure
      :error -> :failure
      _ -> :success
    end
  end

  defp classify(nil, _failed), do: :failure

  defp classify(fun, result) do
    arg =
      case result do
        {:returned, value} -> value
        other -> other
      end

    case fun.(arg) do
      outcome when outcome in [:success, :failure, :ignored] -> outcome
      _ -> :failure
    end
  end

  defp unwrap({:returned, value}), do: value
  defp unwrap(other), do: error_of(other)

  defp error_of({:returned, {:error, _} = error}), do: error
  defp error_of({:returned, other}), do: {:error, other}
  defp error_of(:timeout), do: {:error, :timeout}
  defp error_of(failure), do: {:error, failure}

  defp fallback({:error, reason} = error, o) do
    case Map.fetch(o, :fallback) do
      {:ok, f} when is_function(f, 1) -> {:fallback, f.(reason), reason}
      {:ok, value} -> {:fallback, value, reason}
      :error -> error
    end
  end

  @doc """
  Retries `fun` with exponential backoff and full jitter. Options: `attempts:` (default 3),
  `base_ms:` (10), `max_ms:` (1_000), `retry_on:` a function of the result saying whether
  to retry (default: `{:error, _}` and `:error`), `breaker:` a breaker name and `fallback:`
  (as in `call/3`). With a breaker the whole retry sequence is one call (one outcome), and
  no attempt is made while the breaker is open.
  """
  @spec retry((() -> r), keyword()) :: result(r) when r: term()
  def retry(fun, opts \\ [])

  def retry(fun, opts) when is_function(fun, 0) do
    spec = %{
      attempts: &Options.pos_integer?/1,
      base_ms: &Options.non_neg_integer?/1,
      max_ms: &Options.non_neg_integer?/1,
      retry_on: &is_function(&1, 1),
      breaker: &(is_atom(&1) or is_binary(&1)),
      fallback: fn _ -> true end
    }

    with {:ok, o} <- Options.take(opts, spec) do
      attempts = Map.get(o, :attempts, 3)
      retry_on = Map.get(o, :retry_on, &retryable?/1)
      sequence = fn -> attempt(fun, o, retry_on, 1, attempts) end

      call_opts = if Map.has_key?(o, :fallback), do: [fallback: o.fallback], else: []

      case Map.fetch(o, :breaker) do
        {:ok, name} -> call(name, sequence, call_opts)
        :error -> sequence.()
      end
    end
  end

  def retry(fun, _opts), do: {:error, {:invalid_function, fun}}

  defp attempt(fun, o, retry_on, n, attempts) do
    result = fun.()

    cond do
      n >= attempts or not retry_on.(result) ->
        result

      breaker_open?(Map.get(o, :breaker)) ->
        result

      true ->
        cap = min(Map.get(o, :max_ms, 1_000), Map.get(o, :base_ms, 10) * Integer.pow(2, n - 1))
        Process.sleep(if cap > 0, do: :rand.uniform(cap + 1) - 1, else: 0)
        attempt(fun, o, retry_on, n + 1, attempts)
    end
  end

  defp retryable?(:error), do: true
  defp retryable?({:error, _}), do: true
  defp retryable?(_), do: false

  defp breaker_open?(nil), do: false
  defp breaker_open?(name), do: state(name) in [{:ok, :open}, {:ok, :forced_open}]

  # ---------------------------------------------------------------------------------------
  # inspection and manual control

  @doc "`{:ok, state}` without making a call."
  @spec state(name()) :: {:ok, atom()} | {:error, term()}
  def state(name) do
    with {:ok, {handle, _, _}} <- lookup(name) do
      {state, transitions} = Native.breaker_state(handle)
      publish(name, transitions)
      {:ok, state}
    end
  end

  @doc """
  `{:ok, %{state, calls, successes, failures, slow, rejected, ignored, trips,
  failure_rate, slow_rate, running}}`; rates are over the current window.
  """
  @spec stats(name()) :: {:ok, map()} | {:error, term()}
  def stats(name) do
    with {:ok, {handle, _limit, running}} <- lookup(name) do
      {state, {admitted, rejected, ok, failed, slow, ignored, trips}, {wc, wf, ws}, transitions} =
        Native.breaker_stats(handle)

      publish(name, transitions)

      {:ok,
       %{
         state: state,
         calls: admitted,
         rejected: rejected,
         successes: ok,
         failures: failed,
         slow: slow,
         ignored: ignored,
         trips: trips,
         failure_rate: if(wc > 0, do: wf / wc, else: 0.0),
         slow_rate: if(wc > 0, do: ws / wc, else: 0.0),
         running: :atomics.get(running, 1)
       }}
    end
  end

  @doc "Opens the breaker until `close/1` or `reset/1`."
  @spec force_open(name()) :: :ok | {:error, term()}
  def force_open(name), do: control(name, :force_open)

  @doc "Closes the breaker with an empty window."
  @spec close(name()) :: :ok | {:error, term()}
  def close(name), do: control(name, :close)

  @doc "Closes the breaker and forgets its window, backoff and counters."
  @spec reset(name()) :: :ok | {:error, term()}
  def reset(name), do: control(name, :reset)

  @doc "Admits every call and judges none until `close/1` or `reset/1`."
  @spec disable(name()) :: :ok | {:error, term()}
  def disable(name), do: control(name, :disable)

  defp control(name, action) do
    with {:ok, {handle, _, _}} <- lookup(name) do
      publish(name, Native.breaker_control(handle, action))
    end
  end

  defp lookup(name) when not (is_atom(name) or is_binary(name)),
    do: {:error, {:unknown_breaker, name}}

  defp lookup(name) do
    case :ets.lookup(@table, name) do
      [{_, handle, limit, running}] -> {:ok, {handle, limit, running}}
      [] -> {:error, {:unknown_breaker, name}}
    end
  end

  defp publish(_name, []), do: :ok

  defp publish(name, transitions) do
    for {from, to, reason} <- transitions do
      Events.emit([:dspex, :bridge, :breaker, :state_change], %{}, %{
        name: name,
        from: from,
        to: to,
        reason: reason
      })
    end

    :ok
  end
end
