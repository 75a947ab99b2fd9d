defmodule DSPex.Bridge.ChildSpecsTest do
  @moduledoc """
  Breakers, limiters and the /metrics listener in the user's supervision tree: installed
  while their child runs, gone when it stops; installing twice with the same settings is
  `:ok`, with others a clear error; a refused request says when to retry.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{CircuitBreaker, RateLimiter}
  alias DSPex.Bridge.Analytics.HTTPExporter

  defp name(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  test "a breaker and a limiter live as long as their children" do
    b = name(:spec_breaker)
    l = name(:spec_limiter)

    {:ok, sup} =
      Supervisor.start_link(
        [
          {CircuitBreaker, name: b, failure_threshold: 2},
          {RateLimiter, name: l, capacity: 1, per_second: 1}
        ],
        strategy: :one_for_one
      )

    assert {:ok, :closed} = CircuitBreaker.state(b)
    assert :ok = RateLimiter.check(l, "s")
    # The same settings again: idempotent; others: refused, nothing changed.
    assert :ok = CircuitBreaker.start_breaker(b, failure_threshold: 2)
    assert {:error, {:already_started_with_other_options, ^b}} = CircuitBreaker.start_breaker(b)
    assert :ok = RateLimiter.start_limiter(l, capacity: 1, per_second: 1)

    assert {:error, {:already_started_with_other_options, ^l}} =
             RateLimiter.start_limiter(l, capacity: 2, per_second: 1)

    assert {:error, {:rate_limited, _}} = RateLimiter.check(l, "s")

    :ok = Supervisor.stop(sup)
    assert {:error, {:unknown_breaker, ^b}} = CircuitBreaker.state(b)
    assert {:error, {:unknown_limiter, ^l}} = RateLimiter.check(l, "s")
  end

  test "a child with bad options does not start, with the reason" do
    Process.flag(:trap_exit, true)

    assert {:error,
            {:shutdown, {:failed_to_start_child, _, {:invalid_option, {:failure_threshold, -1}}}}} =
             Supervisor.start_link([{CircuitBreaker, name: name(:bad), failure_threshold: -1}],
               strategy: :one_for_one
             )

    assert {:error, {:shutdown, {:failed_to_start_child, _, {:invalid_option, {:capacity, 0}}}}} =
             Supervisor.start_link([{RateLimiter, name: name(:bad), capacity: 0}],
               strategy: :one_for_one
             )
  end

  test "a refused check says when the next token comes" do
    l = name(:retry_limiter)
    :ok = RateLimiter.start_limiter(l, capacity: 2, per_second: 10)
    on_exit(fn -> RateLimiter.delete_limiter(l) end)
    assert :ok = RateLimiter.check(l, "s")
    assert :ok = RateLimiter.check(l, "s")
    assert {:error, {:rate_limited, ms}} = RateLimiter.check(l, "s")
    assert ms in 1..100
    Process.sleep(ms + 5)
    assert :ok = RateLimiter.check(l, "s")

    never = name(:never_limiter)
    :ok = RateLimiter.start_limiter(never, capacity: 1, per_second: 0)
    on_exit(fn -> RateLimiter.delete_limiter(never) end)
    assert :ok = RateLimiter.check(never, "s")
    assert {:error, {:rate_limited, :infinity}} = RateLimiter.check(never, "s")

    assert {:error, {:unknown_limiter, {:settings, ^never}}} =
             RateLimiter.check({:settings, never}, "s")
  end

  test "the /metrics listener as a child" do
    # An explicit address (this option was refused before Dialyzer caught the check).
    {:ok, sup} =
      Supervisor.start_link([{HTTPExporter, port: 0, ip: {127, 0, 0, 1}}], strategy: :one_for_one)

    [{_, child, _, _}] = Supervisor.which_children(sup)
    listener = :sys.get_state(child) |> elem(1)
    port = Keyword.fetch!(:httpd.info(listener), :port)
    DSPex.Bridge.Analytics.increment(:child_spec_probe)
    {:ok, {{_, 200, _}, _, body}} = :httpc.request(~c"http://127.0.0.1:#{port}/metrics")
    assert to_string(body) =~ "child_spec_probe"
    :ok = Supervisor.stop(sup)
    refute Process.alive?(listener)
    assert {:error, {:invalid_option, {:ip, {1, 2}}}} = HTTPExporter.start(port: 0, ip: {1, 2})
  end
end
