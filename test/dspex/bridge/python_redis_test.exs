defmodule DSPex.Bridge.PythonRedisTest do
  @moduledoc """
  Python tools on a session of the Redis backend, with real interpreters and a real
  redis-server: `ctx` reads, writes, registers, declares dependencies, watches and is
  refused exactly as on a local session.
  """
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{CircuitBreaker, Python, SessionStore, TestRedis}

  @moduletag timeout: 120_000

  setup_all do
    TestRedis.start_backend!()
    :ok
  end

  setup do
    pool = python_pool!(size: 2, health_interval_ms: 60_000)
    :ok = CircuitBreaker.start_breaker(pool, failure_threshold: 1_000)
    on_exit(fn -> CircuitBreaker.delete_breaker(pool) end)
    s = session!(backend: :redis)
    {:ok, _} = SessionStore.register_variable(s, :temperature, :float, 0.5, constraints: [max: 2.0])
    refute :ets.member(:dspex_bridge_sessions, s)
    {:ok, pool: pool, session: s}
  end

  test "ctx on a Redis session: versions, constraints, history, dependencies, access",
       %{pool: pool, session: s} do
    assert {:ok, %{"value" => 0.5, "version" => 1}} =
             Python.call(s, "read", %{name: "temperature"}, pool: pool)

    assert {:ok, 2} =
             Python.call(s, "write", %{name: "temperature", value: 0.9, expected_version: 1},
               pool: pool
             )

    assert {:ok, %{"conflict" => 2}} =
             Python.call(s, "write", %{name: "temperature", value: 1.0, expected_version: 1},
               pool: pool
             )

    assert {:error, {:python, "InvalidValue", _}} =
             Python.call(s, "write", %{name: "temperature", value: 5.0}, pool: pool)

    assert {:ok, result} = Python.call(s, "tune", %{name: "temperature", factor: 2.0}, pool: pool)
    assert result["names"] == ["derived_temperature", "temperature"]
    assert result["history"] == [3, 2, 1]
    assert result["rolled_back"] == 0.9
    assert result["dependents"] == ["derived_temperature"]
    assert result["can_write"] == true
    assert {:ok, [%{version: 4, value: 0.9} | _]} = SessionStore.get_history(s, :temperature)

    assert {:ok, ["derived_temperature"]} =
             DSPex.Bridge.DependencyManager.get_dependents(s, :temperature)
  end

  test "Python reading another Redis session's private variable is denied", %{
    pool: pool,
    session: s
  } do
    other = session!(backend: :redis)
    {:ok, _} = SessionStore.register_variable(other, "secret", :string, "x")

    # The tool catches the AccessDenied that ctx raised.
    assert {:ok, %{"denied" => "access_denied"}} =
             Python.call(s, "peek", %{name: "secret", session: other}, pool: pool)

    :ok = DSPex.Bridge.AccessControl.set_access_mode({other, "secret"}, :protected)
    assert {:ok, "x"} = Python.call(s, "peek", %{name: "secret", session: other}, pool: pool)
  end

  test "Python watches a Redis session's variable", %{pool: pool, session: s} do
    watcher =
      Task.async(fn ->
        Python.call(s, "watch_for", %{names: ["temperature"], count: 1}, pool: pool, timeout: 10_000)
      end)

    # The watch is in place once Python has subscribed: write until it sees a change.
    assert eventually(
             fn ->
               {:ok, _} = SessionStore.update_variable(s, :temperature, :rand.uniform())
               Task.yield(watcher, 50)
             end,
             8_000
           )
           |> then(fn {:ok, {:ok, [change]}} -> change["name"] == "temperature" end)
  end
end
