defmodule DSPex.Bridge.PythonBridgeTest do
  @moduledoc """
  Failure tests against a real python3 process: a raising worker, a hanging worker, a
  worker killed from the OS, and a crowd of callers while Python is down.
  """
  # Not async: these tests time OS processes and the scheduler.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{CircuitBreaker, Python, PythonWorker}

  @moduletag timeout: 120_000

  setup do
    pool = python_pool!(size: 2, health_interval_ms: 60_000)
    # Wait until both interpreters answer.
    eventually(fn -> length(PythonWorker.os_pids(pool)) == 2 end, 10_000)
    {:ok, pool: pool}
  end

  defp breaker!(pool, opts) do
    :ok = CircuitBreaker.start_breaker(pool, opts)
    on_exit(fn -> CircuitBreaker.delete_breaker(pool) end)
    pool
  end

  defp total_calls(pool) do
    # Ask every worker (round robin visits each once per `size` calls).
    for _ <- 1..2, reduce: 0 do
      acc ->
        {:ok, n} = PythonWorker.call(pool, "calls", %{})
        acc + n
    end
  end

  test "Python raising opens the breaker; rejections are fast and never reach Python; probes close it",
       %{pool: pool} do
    b = breaker!(pool, failure_threshold: 3, open_timeout_ms: 300, jitter: 0.0, half_open_calls: 2)

    for _ <- 1..3 do
      assert {:error, {:python, "RuntimeError", "boom"}} =
               Python.call("s", "raise", %{message: "boom"}, pool: pool)
    end

    assert {:ok, :open} = CircuitBreaker.state(b)
    before = total_calls(pool)

    {us, results} =
      :timer.tc(fn ->
        for _ <- 1..1_000, do: Python.call("s", "echo", %{value: 1}, pool: pool)
      end)

    assert Enum.all?(results, &(&1 == {:error, :circuit_open}))
    assert us / 1_000 < 100, "a rejected call took #{us / 1_000} us on average"
    # The two `calls` requests of total_calls/1 are the only new ones.
    assert total_calls(pool) == before + 2

    Process.sleep(320)
    assert {:ok, 1} = Python.call("s", "echo", %{value: 1}, pool: pool)
    assert {:ok, 2} = Python.call("s", "echo", %{value: 2}, pool: pool)
    assert {:ok, :closed} = CircuitBreaker.state(b)
  end

  test "a hanging worker: timeouts are failures, no caller waits past its timeout, the pool recovers",
       %{pool: pool} do
    b = breaker!(pool, failure_threshold: 10)

    for _ <- 1..4 do
      {us, result} = :timer.tc(fn -> Python.call("s", "hang", %{}, pool: pool, timeout: 100) end)

      assert result == {:error, :timeout}
      assert us < 600_000, "caller blocked #{div(us, 1000)} ms past a 100 ms timeout"
    end

    assert {:ok, %{failures: 4}} = CircuitBreaker.stats(b)
    # Stuck interpreters were replaced: the pool still answers.
    assert {:ok, "still here"} =
             eventually(
               fn ->
                 case PythonWorker.call(pool, "echo", %{value: "still here"}) do
                   {:ok, _} = ok -> ok
                   _ -> nil
                 end
               end,
               10_000
             )
  end

  test "a worker killed from the OS is restarted; half-open probes then close the breaker",
       %{pool: pool} do
    b = breaker!(pool, failure_threshold: 1, open_timeout_ms: 200, jitter: 0.0, half_open_calls: 1)
    [os_pid | _] = PythonWorker.os_pids(pool)
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])

    # Calls landing on the dead interpreter fail until it is replaced; that opens the breaker.
    eventually(fn ->
      Python.call("s", "echo", %{value: 1}, pool: pool)
      CircuitBreaker.state(b) == {:ok, :open} or os_pid not in PythonWorker.os_pids(pool)
    end)

    eventually(
      fn ->
        length(PythonWorker.os_pids(pool)) == 2 and os_pid not in PythonWorker.os_pids(pool)
      end,
      10_000
    )

    eventually(
      fn ->
        Python.call("s", "echo", %{value: 1}, pool: pool)
        CircuitBreaker.state(b) == {:ok, :closed}
      end,
      5_000
    )
  end

  test "500 concurrent callers while Python is down: the BEAM stays responsive, nothing leaks",
       %{pool: pool} do
    b = breaker!(pool, failure_threshold: 5, open_timeout_ms: 60_000)
    :ok = PythonWorker.stop_pool(pool)
    processes_before = length(Process.list())

    # A probe process: its round trip measures how responsive the schedulers stay.
    echo = spawn(fn -> echo_loop() end)
    sampler = Task.async(fn -> sample_round_trips(echo, []) end)

    1..500
    |> Task.async_stream(fn _ -> Python.call("s", "echo", %{value: 1}, pool: pool) end,
      max_concurrency: 500,
      timeout: 10_000
    )
    |> Enum.each(fn {:ok, result} -> assert match?({:error, _}, result) end)

    send(sampler.pid, :stop)
    round_trips = Task.await(sampler)
    send(echo, :stop)
    assert {:ok, :open} = CircuitBreaker.state(b)
    assert round_trips != []
    worst = Enum.max(round_trips)
    assert worst < 5_000, "worst probe round trip #{worst} us"

    eventually(fn -> length(Process.list()) <= processes_before + 2 end)
    {:message_queue_len, queue} = Process.info(self(), :message_queue_len)
    assert queue == 0
  end

  test "bad input: unserializable arguments, unknown tools, oversized replies; the pool keeps working",
       %{pool: pool} do
    assert {:error, {:not_serializable, _}} = PythonWorker.call(pool, "echo", %{value: self()})
    assert {:error, {:python, "LookupError", _}} = PythonWorker.call(pool, "no_such_tool", %{})
    assert {:error, {:invalid_tool, 42}} = PythonWorker.call(pool, 42, %{})
    assert {:error, {:invalid_args, [1]}} = PythonWorker.call(pool, "echo", [1])
    assert {:error, {:invalid_option, {:timeout, 0}}} = PythonWorker.call(pool, "ping", %{}, 0)
    assert {:error, {:unknown_pool, :nope}} = PythonWorker.call(:nope, "ping", %{})
    assert {:error, {:already_started, ^pool}} = PythonWorker.start_pool(pool, python_opts())

    assert {:error, {:python_not_found, "no-such-python"}} =
             PythonWorker.start_pool(:x, python: "no-such-python")

    small = python_pool!(size: 1, max_response_bytes: 1_000)
    assert {:error, :oversized_response} = PythonWorker.call(small, "oversized", %{bytes: 5_000})
    assert {:ok, "fine"} = PythonWorker.call(small, "echo", %{value: "fine"})
    for _ <- 1..4, do: assert({:ok, "pong"} = PythonWorker.call(pool, "ping", %{}))
  end

  test "per-session rate limit in front of the bridge", %{pool: pool} do
    limiter = :"limit_#{System.unique_integer([:positive])}"
    :ok = DSPex.Bridge.RateLimiter.start_limiter(limiter, capacity: 3, per_second: 0)
    on_exit(fn -> DSPex.Bridge.RateLimiter.delete_limiter(limiter) end)
    _ = breaker!(pool, [])

    for _ <- 1..3,
        do:
          assert(
            {:ok, 1} = Python.call("greedy", "echo", %{value: 1}, pool: pool, rate_limit: limiter)
          )

    assert {:error, {:rate_limited, :infinity}} =
             Python.call("greedy", "echo", %{value: 1}, pool: pool, rate_limit: limiter)

    assert {:ok, 1} = Python.call("polite", "echo", %{value: 1}, pool: pool, rate_limit: limiter)

    assert {:error, {:unknown_limiter, :nope}} = DSPex.Bridge.RateLimiter.check(:nope, "s")
    assert {:error, {:invalid_session_id, 5}} = DSPex.Bridge.RateLimiter.check(limiter, 5)
  end

  test "a Python-backed variable falls back to its last good value, marked stale", %{pool: pool} do
    b = breaker!(pool, failure_threshold: 1, open_timeout_ms: 60_000)
    s = session!()
    {:ok, _} = DSPex.Bridge.SessionStore.register_variable(s, :score, :float, 0.0)

    assert {:ok, %{value: 0.75, stale: nil, version: 2}} =
             Python.fetch_variable(s, :score, "echo", %{value: 0.75}, pool: pool)

    assert {:ok, %{value: 0.75, stale: {:fallback, {:python, "RuntimeError", _}}}} =
             Python.fetch_variable(s, :score, "raise", %{message: "down"}, pool: pool)

    assert {:ok, :open} = CircuitBreaker.state(b)

    assert {:ok, %{value: 0.75, stale: {:fallback, :circuit_open}, version: 2}} =
             Python.fetch_variable(s, :score, "echo", %{value: 0.9}, pool: pool)
  end

  defp echo_loop do
    receive do
      {:ping, from, ref} ->
        send(from, {:pong, ref})
        echo_loop()

      :stop ->
        :ok
    end
  end

  # Samples at least once, then about every millisecond until told to stop.
  defp sample_round_trips(echo, acc) do
    ref = make_ref()
    t0 = System.monotonic_time(:microsecond)
    send(echo, {:ping, self(), ref})

    acc =
      receive do
        {:pong, ^ref} -> [System.monotonic_time(:microsecond) - t0 | acc]
      end

    receive do
      :stop -> acc
    after
      1 -> sample_round_trips(echo, acc)
    end
  end
end
