defmodule DSPex.Bridge.RedisLocksTest do
  # Optimizer locks of Redis sessions, on a server of this module's own; the backend is one
  # per node, so the module runs alone.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{OptimizerCoordinator, SessionStore, TestRedis, Variable}

  setup_all do
    TestRedis.start_backend!()
    :ok
  end

  setup do
    s = session!(backend: :redis)
    {:ok, _} = SessionStore.register_variable(s, :lr, :float, 0.1)
    %{s: s}
  end

  defp acquire(s, optimizer, opts \\ []),
    do: OptimizerCoordinator.acquire_lock(:lr, optimizer, self(), [session_id: s] ++ opts)

  test "a lock fences writes: only the holder's token writes, and tokens grow", %{s: s} do
    assert {:ok, %{token: t1}} = acquire(s, "a")
    assert {:ok, %{token: ^t1}} = acquire(s, "a")
    assert {:error, {:lock_held_by, "a"}} = acquire(s, "b", conflict_resolution: :abort)
    assert OptimizerCoordinator.locked?(:lr, session_id: s)

    assert {:error, {:locked_by, "a"}} = SessionStore.update_variable(s, :lr, 0.2)
    assert {:error, :stale_token} = SessionStore.update_variable(s, :lr, 0.2, lock_token: t1 + 1)
    assert {:ok, %Variable{version: 2}} = SessionStore.update_variable(s, :lr, 0.2, lock_token: t1)

    assert {:error, :not_lock_owner} = OptimizerCoordinator.release_lock(:lr, "b", session_id: s)
    assert :ok = OptimizerCoordinator.release_lock(:lr, "a", session_id: s)
    refute OptimizerCoordinator.locked?(:lr, session_id: s)
    # Released: the old token writes no more, a write without one does.
    assert {:error, :stale_token} = SessionStore.update_variable(s, :lr, 0.3, lock_token: t1)
    assert {:ok, _} = SessionStore.update_variable(s, :lr, 0.3)
    assert {:ok, %{token: t2}} = acquire(s, "b")
    assert t2 > t1

    assert {:error, {:variable_not_found, :nope}} =
             OptimizerCoordinator.acquire_lock(:nope, "c", self(), session_id: s)
  end

  test "waiters are served by priority, first come first served within one", %{s: s} do
    {:ok, _} = acquire(s, "holder")
    me = self()

    waiter = fn name, priority ->
      spawn_link(fn ->
        result =
          OptimizerCoordinator.acquire_lock(:lr, name, self(),
            session_id: s,
            priority: priority,
            timeout: 10_000
          )

        send(me, {:granted, name, result})
        receive do: (:release -> OptimizerCoordinator.release_lock(:lr, name, session_id: s))
        send(me, {:released, name})
      end)
    end

    # Each waiter is queued before the next one asks.
    pids =
      for {{name, priority}, k} <- Enum.with_index([{"b", 0}, {"c", 5}, {"d", 0}], 1),
          into: %{} do
        pid = waiter.(name, priority)
        assert eventually(fn -> waiters(s) == k end)
        {name, pid}
      end

    :ok = OptimizerCoordinator.release_lock(:lr, "holder", session_id: s)

    for name <- ["c", "b", "d"] do
      assert_receive {:granted, ^name, {:ok, %{optimizer_id: ^name}}}, 5_000
      refute_received {:granted, _, _}
      send(pids[name], :release)
      assert_receive {:released, ^name}, 5_000
    end
  end

  test "a higher priority preempts: the holder is told, loses the lock after its grace, and the preemptor holds",
       %{s: s} do
    me = self()

    holder =
      spawn_link(fn ->
        {:ok, lock} = OptimizerCoordinator.acquire_lock(:lr, "low", self(), session_id: s)
        send(me, {:holding, lock.token})
        for _ <- 1..2, do: receive(do: (msg -> send(me, {:holder_got, msg})))
        Process.sleep(:infinity)
      end)

    assert_receive {:holding, old_token}

    # A preempting request of no higher priority only waits.
    assert {:error, :timeout} =
             acquire(s, "same", conflict_resolution: :preempt, priority: 0, timeout: 200)

    refute_received {:holder_got, _}
    started = System.monotonic_time(:millisecond)

    assert {:ok, %{optimizer_id: "high", token: token}} =
             acquire(s, "high",
               conflict_resolution: :preempt,
               priority: 10,
               grace_ms: 150,
               timeout: 5_000
             )

    assert System.monotonic_time(:millisecond) - started >= 150
    assert token > old_token

    assert_receive {:holder_got,
                    {:optimization_preempted, :lr, {:session_id, ^s, :by, "high", :grace_ms, 150}}}

    assert_receive {:holder_got, {:lock_lost, :lr, :preempted, held_ms}}
    assert held_ms >= 150
    # The preempted holder's token writes no more.
    assert {:error, :stale_token} = SessionStore.update_variable(s, :lr, 0.9, lock_token: old_token)
    assert {:ok, _} = SessionStore.update_variable(s, :lr, 0.9, lock_token: token)
    Process.unlink(holder)
    Process.exit(holder, :kill)
  end

  test "a dead holder's lock goes to the next waiter at once", %{s: s} do
    holder = spawn(fn -> Process.sleep(:infinity) end)

    assert {:ok, _} =
             OptimizerCoordinator.acquire_lock(:lr, "dead", holder, session_id: s, lease_ms: 300_000)

    task = Task.async(fn -> acquire(s, "next", timeout: 10_000) end)
    assert eventually(fn -> waiters(s) == 1 end)
    started = System.monotonic_time(:millisecond)
    Process.exit(holder, :kill)
    assert {:ok, %{optimizer_id: "next"}} = Task.await(task, 15_000)
    # Far within the five-minute lease.
    assert System.monotonic_time(:millisecond) - started < 5_000

    assert {:error, {:holder_down, ^holder}} =
             OptimizerCoordinator.acquire_lock(:lr, "late", holder, session_id: s)
  end

  test "a waiter that times out holds nothing and leaves the queue", %{s: s} do
    {:ok, _} = acquire(s, "a")
    assert {:error, :timeout} = acquire(s, "b", timeout: 100)
    assert waiters(s) == 0
    :ok = OptimizerCoordinator.release_lock(:lr, "a", session_id: s)
    refute OptimizerCoordinator.locked?(:lr, session_id: s)
  end

  test "fencing refuses a paused holder's late write after its lease ran out and another wrote",
       %{s: s} do
    assert {:ok, %{token: old}} = acquire(s, "paused", lease_ms: 200)
    # The next holder is granted when the lease runs out (nobody released it).
    assert {:ok, %{token: new}} = acquire(s, "next", timeout: 10_000)
    assert new > old
    assert {:ok, %Variable{value: 0.5}} = SessionStore.update_variable(s, :lr, 0.5, lock_token: new)

    # The first holder wakes up and writes with its token: refused, nothing changed.
    assert {:error, :stale_token} = SessionStore.update_variable(s, :lr, 0.9, lock_token: old)
    assert {:ok, %Variable{value: 0.5, version: 2}} = SessionStore.get_variable(s, :lr)
  end

  test "renew keeps a lock; bad options are clear errors", %{s: s} do
    {:ok, _} = acquire(s, "a", lease_ms: 300)
    assert :ok = OptimizerCoordinator.renew_lock(:lr, "a", session_id: s, lease_ms: 60_000)

    assert {:ok, %{holder: %{optimizer_id: "a", lease_left_ms: left}}} =
             OptimizerCoordinator.get_lock_info(:lr, session_id: s)

    assert left > 1_000
    assert {:error, :not_lock_owner} = OptimizerCoordinator.renew_lock(:lr, "b", session_id: s)
    assert {:error, {:invalid_option, _}} = acquire(s, "x", timeout: -1)
    assert {:error, :access_denied} = acquire(s, "x", caller: "intruder")
  end

  defp waiters(s) do
    {:ok, %{waiters: n}} = OptimizerCoordinator.get_lock_info(:lr, session_id: s)
    n
  end
end
