defmodule DSPex.Bridge.CircuitBreakerTest do
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{CircuitBreaker, Events, Native}

  doctest DSPex.Bridge.CircuitBreaker

  defp breaker!(opts) do
    name = unique_id("breaker")
    :ok = CircuitBreaker.start_breaker(name, opts)
    on_exit(fn -> CircuitBreaker.delete_breaker(name) end)
    name
  end

  test "opens at the threshold, rejects without running, probes after the wait, closes" do
    :ok = Events.subscribe([:dspex, :bridge, :breaker, :state_change])
    b = breaker!(failure_threshold: 3, open_timeout_ms: 50, jitter: 0.0, half_open_calls: 2)
    for _ <- 1..2, do: {:error, :down} = CircuitBreaker.call(b, fn -> {:error, :down} end)
    assert {:ok, :closed} = CircuitBreaker.state(b)
    {:error, :down} = CircuitBreaker.call(b, fn -> {:error, :down} end)
    assert {:ok, :open} = CircuitBreaker.state(b)

    assert_receive {:dspex_event, _, _,
                    %{name: ^b, from: :closed, to: :open, reason: :consecutive_failures}}

    parent = self()
    assert {:error, :circuit_open} = CircuitBreaker.call(b, fn -> send(parent, :ran) end)
    refute_received :ran

    Process.sleep(60)
    assert {:ok, :half_open} = CircuitBreaker.state(b)
    assert :ok = CircuitBreaker.call(b, fn -> :ok end)
    assert {:ok, :half_open} = CircuitBreaker.state(b)
    assert {:ok, 1} = CircuitBreaker.call(b, fn -> {:ok, 1} end)
    assert {:ok, :closed} = CircuitBreaker.state(b)
    assert_receive {:dspex_event, _, _, %{name: ^b, to: :closed, reason: :probes_succeeded}}

    {:ok, stats} = CircuitBreaker.stats(b)
    assert %{failures: 3, successes: 2, rejected: 1, trips: 1} = stats
  end

  test "a failing probe reopens with a longer wait" do
    b =
      breaker!(failure_threshold: 1, open_timeout_ms: 100, max_open_timeout_ms: 1_000, jitter: 0.0)

    {:error, _} = CircuitBreaker.call(b, fn -> {:error, :x} end)
    Process.sleep(110)
    {:error, _} = CircuitBreaker.call(b, fn -> {:error, :still} end)
    reopened = System.monotonic_time(:millisecond)
    assert {:ok, :open} = CircuitBreaker.state(b)
    # The second wait is 200 ms, twice the first.
    Process.sleep(100)

    if System.monotonic_time(:millisecond) - reopened < 200,
      do: assert({:ok, :open} = CircuitBreaker.state(b))

    Process.sleep(max(reopened + 205 - System.monotonic_time(:millisecond), 0))
    assert {:ok, :half_open} = CircuitBreaker.state(b)
  end

  test "rate window: trips on failure rate once min_calls are in" do
    b = breaker!(window: {:count, 10}, min_calls: 4, failure_rate: 0.5)
    for r <- [:ok, :ok, {:error, 1}], do: CircuitBreaker.call(b, fn -> r end)
    assert {:ok, :closed} = CircuitBreaker.state(b)
    CircuitBreaker.call(b, fn -> {:error, 2} end)
    assert {:ok, :open} = CircuitBreaker.state(b)
  end

  test "slow calls trip a slow-rate window" do
    b =
      breaker!(
        window: {:count, 5},
        min_calls: 2,
        failure_rate: 1.0,
        slow_call_ms: 20,
        slow_rate: 0.5
      )

    :ok = CircuitBreaker.call(b, fn -> Process.sleep(25) && :ok end)
    assert {:ok, :closed} = CircuitBreaker.state(b)
    :ok = CircuitBreaker.call(b, fn -> :ok end)
    assert {:ok, :open} = CircuitBreaker.state(b)
  end

  test "exceptions, exits, throws and timeouts are failures and come back as errors" do
    b = breaker!(failure_threshold: 10)

    assert {:error, {:exception, %ArgumentError{}}} =
             CircuitBreaker.call(b, fn -> raise ArgumentError end)

    assert {:error, {:exit, :bye}} = CircuitBreaker.call(b, fn -> exit(:bye) end)
    assert {:error, {:throw, :t}} = CircuitBreaker.call(b, fn -> throw(:t) end)
    started = System.monotonic_time(:millisecond)

    assert {:error, :timeout} =
             CircuitBreaker.call(b, fn -> Process.sleep(:infinity) end, timeout: 50)

    assert System.monotonic_time(:millisecond) - started < 500
    assert {:ok, %{failures: 4}} = CircuitBreaker.stats(b)
  end

  test "fallback and classify" do
    b = breaker!(failure_threshold: 1, open_timeout_ms: 60_000)

    assert {:fallback, :cached, :boom} =
             CircuitBreaker.call(b, fn -> {:error, :boom} end, fallback: :cached)

    assert {:fallback, {:stale, :circuit_open}, :circuit_open} =
             CircuitBreaker.call(b, fn -> :ok end, fallback: &{:stale, &1})

    c = breaker!(failure_threshold: 1)

    ignore_not_found = fn
      {:error, :not_found} -> :ignored
      _ -> :success
    end

    assert {:error, :not_found} =
             CircuitBreaker.call(c, fn -> {:error, :not_found} end, classify: ignore_not_found)

    assert {:ok, :closed} = CircuitBreaker.state(c)
  end

  test "bulkhead rejects past max_concurrent" do
    b = breaker!(max_concurrent: 2)
    parent = self()

    holders =
      for _ <- 1..2 do
        spawn(fn ->
          CircuitBreaker.call(b, fn ->
            send(parent, :inside)
            receive do: (:go -> :ok)
          end)
        end)
      end

    assert_receive :inside
    assert_receive :inside
    assert {:error, :bulkhead_full} = CircuitBreaker.call(b, fn -> :ok end)
    for h <- holders, do: send(h, :go)
    eventually(fn -> match?({:ok, %{running: 0}}, CircuitBreaker.stats(b)) end)
    assert :ok = CircuitBreaker.call(b, fn -> :ok end)
  end

  test "manual control" do
    b = breaker!([])
    :ok = CircuitBreaker.force_open(b)
    assert {:error, :circuit_open} = CircuitBreaker.call(b, fn -> :ok end)
    :ok = CircuitBreaker.disable(b)
    for _ <- 1..10, do: {:error, _} = CircuitBreaker.call(b, fn -> {:error, :x} end)
    assert {:ok, :disabled} = CircuitBreaker.state(b)
    :ok = CircuitBreaker.reset(b)
    assert {:ok, %{state: :closed, calls: 0}} = CircuitBreaker.stats(b)
    :ok = CircuitBreaker.force_open(b)
    :ok = CircuitBreaker.close(b)
    assert {:ok, :closed} = CircuitBreaker.state(b)
  end

  test "retry backs off, stops on success, and counts one outcome per sequence" do
    b = breaker!(failure_threshold: 2)
    counter = :counters.new(1, [])

    flaky = fn ->
      :counters.add(counter, 1, 1)
      if :counters.get(counter, 1) < 3, do: {:error, :flaky}, else: {:ok, :done}
    end

    assert {:ok, :done} = CircuitBreaker.retry(flaky, attempts: 5, base_ms: 1, breaker: b)
    assert :counters.get(counter, 1) == 3
    assert {:ok, %{calls: 1, successes: 1, failures: 0}} = CircuitBreaker.stats(b)

    always = fn -> {:error, :nope} end
    assert {:error, :nope} = CircuitBreaker.retry(always, attempts: 3, base_ms: 1, breaker: b)
    assert {:ok, %{calls: 2, failures: 1}} = CircuitBreaker.stats(b)
  end

  test "retry makes no attempt while the breaker is open" do
    b = breaker!(failure_threshold: 1, open_timeout_ms: 60_000)
    {:error, _} = CircuitBreaker.call(b, fn -> {:error, :x} end)
    parent = self()

    assert {:error, :circuit_open} =
             CircuitBreaker.retry(fn -> send(parent, :tried) end, breaker: b)

    refute_received :tried
  end

  test "bad input" do
    assert {:error, {:unknown_breaker, :nope}} = CircuitBreaker.call(:nope, fn -> :ok end)
    assert {:error, {:unknown_breaker, :nope}} = CircuitBreaker.state(:nope)
    assert {:error, {:invalid_name, 1}} = CircuitBreaker.start_breaker(1)

    assert {:error, {:invalid_option, {:failure_rate, 2}}} =
             CircuitBreaker.start_breaker(:x1, failure_rate: 2)

    assert {:error, {:invalid_option, {:window, {:count, 0}}}} =
             CircuitBreaker.start_breaker(:x1, window: {:count, 0})

    assert {:error, {:invalid_option, {:unknown, :colour}}} =
             CircuitBreaker.start_breaker(:x1, colour: 1)

    assert {:error, {:invalid_option, {:max_open_timeout_ms, 5}}} =
             CircuitBreaker.start_breaker(:x1, open_timeout_ms: 10, max_open_timeout_ms: 5)

    b = breaker!([])
    # Installing again: the same settings are :ok, others a clear error.
    assert :ok = CircuitBreaker.start_breaker(b)
    assert :ok = CircuitBreaker.start_breaker(b, failure_threshold: 5)

    assert {:error, {:already_started_with_other_options, ^b}} =
             CircuitBreaker.start_breaker(b, failure_threshold: 6)

    assert {:error, {:invalid_function, :f}} = CircuitBreaker.call(b, :f)

    assert {:error, {:invalid_option, {:timeout, -1}}} =
             CircuitBreaker.call(b, fn -> :ok end, timeout: -1)

    for bad <- [1, :x, "x", self(), {:consecutive}, {:consecutive, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}] do
      assert_raise ArgumentError, fn -> Native.breaker_new(bad) end
    end

    assert_raise ArgumentError, fn -> Native.breaker_allow(:not_a_breaker) end
  end
end
