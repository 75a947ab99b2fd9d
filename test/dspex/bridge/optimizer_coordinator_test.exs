defmodule DSPex.Bridge.OptimizerCoordinatorTest do
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.OptimizerCoordinator, as: C

  doctest DSPex.Bridge.OptimizerCoordinator

  defp var, do: unique_id("var")

  test "abort, release, not owner, double release" do
    v = var()
    assert {:ok, %C.Lock{token: t1}} = C.acquire_lock(v, "a", self())

    assert {:error, {:lock_held_by, "a"}} =
             C.acquire_lock(v, "b", self(), conflict_resolution: :abort)

    assert {:ok, %C.Lock{token: ^t1}} = C.acquire_lock(v, "a", self())
    assert C.locked?(v)
    assert {:error, :not_lock_owner} = C.release_lock(v, "b")
    assert :ok = C.release_lock(v, "a")
    assert {:error, :not_lock_owner} = C.release_lock(v, "a")
    refute C.locked?(v)
    assert {:ok, %C.Lock{token: t2}} = C.acquire_lock(v, "b", self())
    assert t2 > t1
  end

  test "a waiter gets the lock when the holder releases; tokens fence the old holder" do
    v = var()
    {:ok, first} = C.acquire_lock(v, "a", self())
    parent = self()
    # The waiter stays alive: a holder that exits loses its locks.
    waiter =
      spawn(fn ->
        send(parent, {:got, C.acquire_lock(v, "b", self(), timeout: 2_000)})
        Process.sleep(:infinity)
      end)

    eventually(fn -> match?({:ok, %{waiters: [_]}}, C.get_lock_info(v)) end)
    :ok = C.release_lock(v, "a")
    assert_receive {:got, {:ok, %C.Lock{token: t}}}
    assert t > first.token
    assert {:error, :stale_token} = C.check_write_allowed(v, first.token)
    assert :ok = C.check_write_allowed(v, t)
    assert {:error, {:locked_by, "b"}} = C.check_write_allowed(v, nil)
    Process.exit(waiter, :kill)
  end

  test "a killed holder's lock goes to the waiter at once" do
    v = var()
    parent = self()

    holder =
      spawn(fn ->
        {:ok, _} = C.acquire_lock(v, "doomed", self())
        send(parent, :holding)
        Process.sleep(:infinity)
      end)

    assert_receive :holding
    waiter = Task.async(fn -> C.acquire_lock(v, "next", self(), timeout: 2_000) end)
    eventually(fn -> match?({:ok, %{waiters: [_]}}, C.get_lock_info(v)) end)
    killed_at = System.monotonic_time(:microsecond)
    Process.exit(holder, :kill)
    assert {:ok, %C.Lock{optimizer_id: "next"}} = Task.await(waiter)
    assert System.monotonic_time(:microsecond) - killed_at < 50_000
  end

  test "a killed waiter leaves the queue" do
    v = var()
    {:ok, _} = C.acquire_lock(v, "a", self())
    w = spawn(fn -> C.acquire_lock(v, "w", self(), timeout: 10_000) end)
    eventually(fn -> match?({:ok, %{waiters: [_]}}, C.get_lock_info(v)) end)
    Process.exit(w, :kill)
    eventually(fn -> match?({:ok, %{waiters: []}}, C.get_lock_info(v)) end)
    :ok = C.release_lock(v, "a")
    refute C.locked?(v)
  end

  test "an expired lease frees the lock and tells the holder" do
    :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :coordinator, :lease_expired])
    v = var()
    {:ok, lock} = C.acquire_lock(v, "slow", self(), lease_ms: 50)
    assert_receive {:lock_lost, ^v, :lease_expired, _held_ms}, 1_000

    assert_receive {:dspex_event, _, %{held_duration_ms: held},
                    %{var_id: ^v, optimizer_id: "slow"}},
                   1_000

    assert held >= 50
    refute C.locked?(v)
    # A paused holder waking up after its lease cannot write with its old token.
    assert {:error, :stale_token} = C.check_write_allowed(v, lock.token)
  end

  test "renewal keeps the lease" do
    v = var()
    lease = 300
    {:ok, _} = C.acquire_lock(v, "busy", self(), lease_ms: lease)
    acquired = System.monotonic_time(:millisecond)

    # Renew every 100 ms for 500 ms, longer than one lease. Each renewal is judged by the
    # time that really passed since the previous one (a loaded machine may oversleep).
    {_, in_time} =
      Enum.reduce(1..5, {acquired, true}, fn _, {last, ok_so_far} ->
        Process.sleep(100)
        result = C.renew_lock(v, "busy", lease_ms: lease)
        on_time = System.monotonic_time(:millisecond) - last < lease
        if on_time and ok_so_far, do: assert(result == :ok)
        {System.monotonic_time(:millisecond), ok_so_far and on_time}
      end)

    assert System.monotonic_time(:millisecond) - acquired > lease
    if in_time, do: assert(C.locked?(v))
    assert {:error, :not_lock_owner} = C.renew_lock(v, "other")
  end

  test "preemption: notice, grace, then the lock moves" do
    :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :coordinator, :preempted])
    v = var()
    {:ok, _} = C.acquire_lock(v, "low", self(), priority: 1)

    task =
      Task.async(fn ->
        C.acquire_lock(v, "high", self(),
          priority: 5,
          conflict_resolution: :preempt,
          grace_ms: 50,
          timeout: 2_000
        )
      end)

    assert_receive {:optimization_preempted, ^v, {:session_id, :global, :by, "high", :grace_ms, _}},
                   1_000

    assert_receive {:lock_lost, ^v, :preempted, _}, 1_000
    assert {:ok, %C.Lock{optimizer_id: "high"}} = Task.await(task)

    assert_receive {:dspex_event, _, %{held_duration_ms: _}, %{var_id: ^v, optimizer_id: "low"}},
                   1_000
  end

  test "a timed-out waiter holds nothing" do
    v = var()
    {:ok, _} = C.acquire_lock(v, "a", self())
    assert {:error, :timeout} = C.acquire_lock(v, "b", self(), timeout: 30)
    assert {:ok, %{holder: %{optimizer_id: "a"}, waiters: []}} = C.get_lock_info(v)
  end

  test "64 processes x 1,000 acquire/release cycles on 16 variables: exact counts" do
    vars = for i <- 1..16, do: "#{var()}_#{i}"
    counters = :ets.new(:counters, [:public, :set])
    for v <- vars, do: :ets.insert(counters, {v, 0})

    1..64
    |> Enum.map(fn p ->
      Task.async(fn ->
        for i <- 1..1_000 do
          v = Enum.at(vars, rem(p * 7 + i, 16))
          {:ok, _} = C.acquire_lock(v, "p#{p}", self(), timeout: 30_000)
          # Non-atomic read-modify-write: only exclusive access keeps it exact.
          [{^v, n}] = :ets.lookup(counters, v)
          :ets.insert(counters, {v, n + 1})
          :ok = C.release_lock(v, "p#{p}")
        end
      end)
    end)
    |> Enum.each(&Task.await(&1, 120_000))

    total = :ets.foldl(fn {_, n}, acc -> acc + n end, 0, counters)
    assert total == 64_000
  end

  test "overlapping multi-variable acquires all finish" do
    vars = for i <- 1..6, do: "#{var()}_#{i}"

    1..12
    |> Enum.map(fn p ->
      Task.async(fn ->
        for _ <- 1..50 do
          picked = Enum.take_random(vars, 3)
          {:ok, locks} = C.acquire_locks(picked, "m#{p}", timeout: 30_000)
          for l <- locks, do: :ok = C.release_lock(l.var_id, "m#{p}")
        end
      end)
    end)
    |> Enum.each(&Task.await(&1, 60_000))

    for v <- vars, do: refute(C.locked?(v))
  end

  test "a lock carries its token and the wall-clock time it was granted" do
    v = var()
    before = :os.system_time(:millisecond)
    {:ok, lock} = C.acquire_lock(v, "a", self())
    later = :os.system_time(:millisecond)
    # The NIF derives it from its monotonic clock: equal to the OS clock up to its slewing.
    assert lock.acquired_at >= before - 1_000 and lock.acquired_at <= later + 1_000
    assert {:ok, %{token: token}} = C.acquire_lock(v, "a", self())
    assert token == lock.token
    :ok = C.release_lock(v, "a")
  end

  test "bad input, lock state unchanged" do
    v = var()
    {:ok, _} = C.acquire_lock(v, "a", self())
    assert {:error, {:invalid_name, 1.5}} = C.acquire_lock(1.5, "a", self())
    assert {:error, {:invalid_optimizer_id, {}}} = C.acquire_lock(v, {}, self())
    assert {:error, {:invalid_pid, :me}} = C.acquire_lock(v, "a", :me)
    assert {:error, {:invalid_option, {:timeout, -1}}} = C.acquire_lock(v, "b", self(), timeout: -1)

    assert {:error, {:invalid_option, {:conflict_resolution, :fight}}} =
             C.acquire_lock(v, "b", self(), conflict_resolution: :fight)

    assert {:error, {:invalid_option, {:unknown, :bogus}}} =
             C.acquire_lock(v, "b", self(), bogus: 1)

    assert {:error, {:invalid_option, :abort}} = C.acquire_lock(v, "b", self(), [:abort])

    assert {:error, {:invalid_option, {:not_a_keyword_list, %{}}}} =
             C.acquire_lock(v, "b", self(), %{})

    assert {:error, {:invalid_option, {:lease_ms, 0}}} = C.acquire_lock(v, "b", self(), lease_ms: 0)
    assert {:error, {:invalid_session_id, 3.0}} = C.release_lock(v, "a", session_id: 3.0)

    assert {:error, {:invalid_option, {:not_a_keyword_list, :now}}} = C.release_lock(v, "a", :now)

    # Any atom is an id (not only Latin-1 ones), compared exactly.
    assert {:error, :not_lock_owner} = C.release_lock(:"😀", "a")
    assert {:ok, emoji} = C.acquire_lock(:"😀", :优化器, self())
    assert {:ok, %{holder: %{optimizer_id: :优化器}}} = C.get_lock_info(:"😀")
    assert {:error, :not_lock_owner} = C.release_lock(:"😀", "优化器")
    assert :ok = C.release_lock(:"😀", :优化器)
    assert emoji.token > 0
    assert {:error, {:invalid_token, -5}} = C.check_write_allowed(v, -5)
    assert {:error, {:invalid_variables, :x}} = C.acquire_locks(:x, "a")
    assert {:error, :not_locked} = C.force_release(var())
    assert {:ok, %{holder: %{optimizer_id: "a"}}} = C.get_lock_info(v)
    assert :ok = C.force_release(v)
    assert_receive {:lock_lost, ^v, :forced, _}
  end

  test "SessionStore writes to a locked variable need the holder's token" do
    s = session!()
    {:ok, _} = DSPex.Bridge.SessionStore.register_variable(s, :lr, :float, 0.1)
    {:ok, lock} = C.acquire_lock(:lr, "tuner", self(), session_id: s, lease_ms: 60_000)
    store = DSPex.Bridge.SessionStore

    assert {:error, {:locked_by, "tuner"}} = store.update_variable(s, :lr, 0.2)
    assert {:error, :stale_token} = store.update_variable(s, :lr, 0.2, lock_token: lock.token + 1)
    assert {:ok, %{value: 0.2}} = store.update_variable(s, :lr, 0.2, lock_token: lock.token)

    assert {:error, {:locked_by, "tuner"}} = store.update_variables(s, %{lr: 0.3})

    :ok = C.release_lock(:lr, "tuner", session_id: s)
    assert {:ok, %{value: 0.4}} = store.update_variable(s, :lr, 0.4)
    # The released holder's token is refused from now on.
    assert {:error, :stale_token} = store.update_variable(s, :lr, 0.5, lock_token: lock.token)
  end

  describe "optimization runs" do
    test "progress, best so far, stall, completion through SessionStore, history" do
      :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :coordinator])
      s = session!()
      {:ok, _} = DSPex.Bridge.SessionStore.register_variable(s, :lr, :float, 0.1)
      {:ok, lock} = C.acquire_lock(:lr, "tuner", self(), session_id: s)
      {:ok, id} = C.start_optimization(lock, objective: {:minimize, :loss}, stall_reports: 2)

      :ok = C.report_progress(id, 1, 0.05, %{loss: 0.9})
      :ok = C.report_progress(id, 2, 0.02, %{loss: 0.4})
      :ok = C.report_progress(id, 3, 0.01, %{loss: 0.6})
      refute_received {:dspex_event, [:dspex, :bridge, :coordinator, :stalled], _, _}
      :ok = C.report_progress(id, 4, 0.03, %{loss: 0.5})

      assert_received {:dspex_event, [:dspex, :bridge, :coordinator, :stalled], _,
                       %{optimization_id: ^id}}

      assert {:ok,
              %{status: :running, best: 0.4, best_value: 0.02, best_iteration: 2, iteration: 4}} =
               C.get_optimization_status(id)

      assert Enum.any?(C.list_active_optimizations(), &(&1.id == id))

      assert {:ok, %{value: 0.02}} = C.complete_optimization(id, 0.02, %{loss: 0.4})
      refute C.locked?(:lr, session_id: s)
      assert {:ok, %{status: :completed}} = C.get_optimization_status(id)
      refute Enum.any?(C.list_active_optimizations(), &(&1.id == id))
      assert [%{id: ^id, status: :completed}] = C.get_optimization_history(:lr, 10, session_id: s)

      assert_received {:dspex_event, [:dspex, :bridge, :coordinator, :completed], _,
                       %{optimization_id: ^id}}
    end

    test "maximize objective, failure releases the lock, silence counts as a stall" do
      :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :coordinator, :stalled])
      v = var()
      {:ok, lock} = C.acquire_lock(v, "m", self())
      {:ok, id} = C.start_optimization(lock, objective: {:maximize, :accuracy}, stall_ms: 60)
      :ok = C.report_progress(id, 1, :a, %{accuracy: 0.5})
      :ok = C.report_progress(id, 2, :b, %{accuracy: 0.7})
      assert {:ok, %{best: 0.7, best_value: :b}} = C.get_optimization_status(id)
      assert_receive {:dspex_event, _, %{silent_ms: silent}, %{optimization_id: ^id}}, 1_000
      assert silent >= 60
      :ok = C.fail_optimization(id, :diverged)
      refute C.locked?(v)
      assert {:ok, %{status: :failed, reason: :diverged}} = C.get_optimization_status(id)
    end

    test "a run on a lock that is gone fails; bad input" do
      v = var()
      {:ok, lock} = C.acquire_lock(v, "x", self())
      {:ok, id} = C.start_optimization(lock)
      :ok = C.force_release(v)
      assert {:error, :not_lock_owner} = C.report_progress(id, 1, 1, %{loss: 1})
      assert {:ok, %{status: :failed, reason: :lock_lost}} = C.get_optimization_status(id)
      assert {:error, :not_lock_owner} = C.start_optimization(lock)
      assert {:error, {:unknown_optimization, "nope"}} = C.report_progress("nope", 1, 1, %{})
      assert {:error, {:invalid_progress, _}} = C.report_progress(id, :one, 1, %{})

      {:ok, other} = C.acquire_lock(var(), "y", self())

      assert {:error, {:invalid_option, {:objective, :fast}}} =
               C.start_optimization(other, objective: :fast)

      assert {:error, {:invalid_option, {:limit, 0}}} = C.get_optimization_history(v, 0)
    end
  end

  test "locking another session's variable needs :optimize" do
    s = session!()

    {:ok, _} =
      DSPex.Bridge.SessionStore.register_variable(s, :lr, :float, 0.1,
        access_rules: [[id: "tuners", session_pattern: "tuner_*", permissions: [:optimize]]]
      )

    assert {:error, :access_denied} =
             C.acquire_lock(:lr, "o1", self(), session_id: s, caller: "guest")

    assert {:ok, _} = C.acquire_lock(:lr, "o2", self(), session_id: s, caller: "tuner_1")
    assert {:ok, _} = C.acquire_lock(:lr, "o2", self(), session_id: s, caller: s)
  end
end
