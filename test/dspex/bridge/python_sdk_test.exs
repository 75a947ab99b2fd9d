defmodule DSPex.Bridge.PythonSDKTest do
  @moduledoc """
  The Python SDK through the local carrier, with real interpreters: `ctx` reads and writes
  the call's session through SessionStore, identity is the call's session, output never
  corrupts a frame, and failures stay with the call that had them.
  """
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{
    CircuitBreaker,
    Events,
    OptimizerCoordinator,
    Python,
    PythonWorker,
    SessionStore
  }

  @moduletag timeout: 120_000

  setup do
    pool = python_pool!(size: 2, health_interval_ms: 60_000)
    :ok = CircuitBreaker.start_breaker(pool, failure_threshold: 1_000)
    on_exit(fn -> CircuitBreaker.delete_breaker(pool) end)
    s = session!()
    {:ok, _} = SessionStore.register_variable(s, :temperature, :float, 0.5, constraints: [max: 2.0])
    {:ok, pool: pool, session: s}
  end

  test "ctx reads and writes the call's session, with versions, constraints and history",
       %{pool: pool, session: s} do
    assert {:ok, ^s} = Python.call(s, "session_of", %{}, pool: pool)

    assert {:ok, %{"name" => "temperature", "type" => "float", "value" => 0.5, "version" => 1}} =
             Python.call(s, "read", %{name: "temperature"}, pool: pool)

    assert {:ok, 2} =
             Python.call(s, "write", %{name: "temperature", value: 0.9, expected_version: 1},
               pool: pool
             )

    # A stale version raises VersionMismatch in Python, carrying the current version.
    assert {:ok, %{"conflict" => 2}} =
             Python.call(s, "write", %{name: "temperature", value: 1.0, expected_version: 1},
               pool: pool
             )

    assert {:error, {:python, "InvalidValue", _}} =
             Python.call(s, "write", %{name: "temperature", value: 5.0}, pool: pool)

    assert {:ok, %{value: 0.9, version: 2}} = SessionStore.get_variable(s, :temperature)

    assert {:ok, result} = Python.call(s, "tune", %{name: "temperature", factor: 2.0}, pool: pool)
    assert result["names"] == ["derived_temperature", "temperature"]
    assert result["history"] == [3, 2, 1]
    assert result["rolled_back"] == 0.9
    assert result["dependents"] == ["derived_temperature"]
    assert result["can_write"] == true
    # What Python did went through SessionStore: history, the graph, a new variable.
    assert {:ok, [%{version: 4, value: 0.9} | _]} = SessionStore.get_history(s, :temperature)

    assert {:ok, ["derived_temperature"]} =
             DSPex.Bridge.DependencyManager.get_dependents(s, :temperature)
  end

  test "a tool acts only as its call's session: another session's private variable is denied",
       %{pool: pool, session: s} do
    other = session!()
    {:ok, _} = SessionStore.register_variable(other, :secret, :string, "hidden")

    assert {:ok, %{"denied" => "access_denied"}} =
             Python.call(s, "peek", %{name: "secret", session: other}, pool: pool)

    {:ok, _} =
      SessionStore.register_variable(other, :open, :string, "visible", access_mode: :public)

    assert {:ok, "visible"} = Python.call(s, "peek", %{name: "open", session: other}, pool: pool)
    # Without a session, ctx has nobody to act for.
    assert {:error, {:python, "BridgeError", _}} =
             PythonWorker.call(pool, "read", %{name: "temperature"})
  end

  test "print() and raw writes to fd 1 and 2 reach Logger as lines and never corrupt a frame",
       %{pool: pool} do
    :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :python, :log])
    on_exit(fn -> DSPex.Bridge.Events.unsubscribe([:dspex, :bridge, :python, :log]) end)
    assert {:ok, "loud"} = PythonWorker.call(pool, "shout", %{text: "loud"})
    assert {:ok, [1, 2]} = PythonWorker.call(pool, "echo", %{value: [1, 2]})

    for {stream, line} <- [
          {:stdout, "loud"},
          {:stderr, "loud"},
          {:stdout, "no newline at the end"},
          {:stdout, "\uFFFD raw bytes on fd 1"}
        ] do
      assert_receive {:dspex_event, [:dspex, :bridge, :python, :log], _,
                      %{stream: ^stream, line: ^line}},
                     5_000
    end
  end

  test "a slow call does not hold the others; async tools; 1,000 concurrent calls over 4 workers" do
    pool = python_pool!(size: 4, concurrency: 8)
    slow = Task.async(fn -> PythonWorker.call(pool, "sleep", %{ms: 1_500}, 5_000) end)
    Process.sleep(50)
    {us, {:ok, "pong"}} = :timer.tc(fn -> PythonWorker.call(pool, "ping", %{}) end)
    assert us < 1_000_000
    assert {:ok, 7} = PythonWorker.call(pool, "async_echo", %{value: 7, ms: 5})

    results =
      1..1_000
      |> Task.async_stream(fn i -> PythonWorker.call(pool, "echo", %{value: i}, 30_000) end,
        max_concurrency: 200,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, r} -> r end)

    assert results == Enum.map(1..1_000, &{:ok, &1})
    assert {:ok, 1_500} = Task.await(slow, 5_000)
  end

  test "10 MB arguments and results cross whole", %{pool: pool} do
    big = :binary.copy("0123456789", 1_000_000)
    assert {:ok, ^big} = PythonWorker.call(pool, "echo", %{value: big}, 30_000)
  end

  test "a session's calls go to one worker while it lives", %{pool: pool, session: s} do
    pids = for _ <- 1..20, do: elem(Python.call(s, "pid", %{}, pool: pool), 1)
    assert [os_pid] = Enum.uniq(pids)
    assert os_pid in PythonWorker.os_pids(pool)
    # Without a session, calls go round the pool.
    assert length(Enum.uniq(for _ <- 1..4, do: PythonWorker.call(pool, "pid", %{}))) == 2
  end

  test "a hung tool: the caller gets :timeout at its deadline, Python is told, the worker serves on",
       %{pool: pool, session: s} do
    {us, result} = :timer.tc(fn -> Python.call(s, "hang", %{}, pool: pool, timeout: 200) end)
    assert result == {:error, :timeout}
    assert us < 1_000_000
    assert {:ok, 1} = Python.call(s, "echo", %{value: 1}, pool: pool)
    assert [%{in_flight: 0}, %{in_flight: 0}] = PythonWorker.workers(pool)
  end

  test "kill -9 mid-call: its caller gets an error before its deadline, other workers untouched, the worker is back",
       %{pool: pool} do
    [a, b] = PythonWorker.workers(pool)
    # Find sessions served by each worker (the tool tells its interpreter's pid).
    on = fn os_pid ->
      Enum.find_value(1..200, fn i ->
        s = "aff_#{System.unique_integer([:positive])}_#{i}"
        if Python.call(s, "pid", %{}, pool: pool) == {:ok, os_pid}, do: s
      end)
    end

    sa = on.(a.os_pid)
    sb = on.(b.os_pid)
    {:ok, ^sa} = SessionStore.create_session(sa)
    {:ok, ^sb} = SessionStore.create_session(sb)
    on_exit(fn -> SessionStore.delete_session(sa) && SessionStore.delete_session(sb) end)

    victim =
      Task.async(fn -> Python.call(sa, "sleep", %{ms: 5_000}, pool: pool, timeout: 10_000) end)

    bystander =
      Task.async(fn -> Python.call(sb, "sleep", %{ms: 300}, pool: pool, timeout: 10_000) end)

    eventually(fn -> Enum.all?(PythonWorker.workers(pool), &(&1.in_flight == 1)) end)
    killed_at = System.monotonic_time(:millisecond)
    System.cmd("kill", ["-9", Integer.to_string(a.os_pid)])
    assert {:error, {:worker_exited, _}} = Task.await(victim, 10_000)
    # Told of the death, not left to its 10 s deadline.
    assert System.monotonic_time(:millisecond) - killed_at < 5_000
    assert {:ok, 300} = Task.await(bystander, 5_000)

    eventually(
      fn ->
        length(PythonWorker.os_pids(pool)) == 2 and a.os_pid not in PythonWorker.os_pids(pool)
      end,
      20_000
    )

    eventually(fn -> Python.call(sa, "echo", %{value: 1}, pool: pool) == {:ok, 1} end, 20_000)
  end

  test "a pool in the user's supervision tree, through its child spec" do
    name = :"child_pool_#{System.unique_integer([:positive])}"

    {:ok, sup} =
      Supervisor.start_link([{PythonWorker, python_opts(name: name, size: 1)}],
        strategy: :one_for_one
      )

    eventually(fn -> PythonWorker.call(name, "ping", %{}) == {:ok, "pong"} end, 20_000)
    assert [%{slot: 1, remote: false, in_flight: 0, tools: tools}] = PythonWorker.workers(name)
    assert "ping" in tools
    assert {:error, {:already_started, ^name}} = PythonWorker.start_pool(name, python_opts())
    Supervisor.stop(sup)
    # The registry forgets the pool once it has seen its supervisor go (asynchronously);
    # until then a call finds no worker.
    assert PythonWorker.call(name, "ping", %{}) in [
             {:error, {:unknown_pool, name}},
             {:error, :worker_unavailable}
           ]

    eventually(fn -> PythonWorker.call(name, "ping", %{}) == {:error, {:unknown_pool, name}} end)
  end

  test "bad input to the new functions: clear errors", %{pool: pool} do
    assert {:error, {:invalid_session_id, {:s}}} = Python.call({:s}, "echo", %{}, pool: pool)
    assert {:error, {:invalid_args, :x}} = Python.call("s", "echo", :x, pool: pool)
    assert [] = PythonWorker.workers(:no_such_pool)
    assert {:error, {:invalid_option, {:not_a_keyword_list, :x}}} = PythonWorker.start_link(:x)
    assert {:error, {:invalid_option, {:missing, :name}}} = PythonWorker.start_link([])
    assert {:error, {:invalid_pool_name, nil}} = PythonWorker.start_link(name: nil)

    assert {:error, {:invalid_option, {:modules, [1]}}} =
             PythonWorker.start_pool(:bad, modules: [1])

    assert {:error, {:invalid_option, {:env, [{:a, 1}]}}} =
             PythonWorker.start_pool(:bad, env: [{:a, 1}])
  end

  test "events: call start, stop and exception; a killed worker left and restarted",
       %{pool: pool, session: s} do
    Events.subscribe([:dspex, :bridge, :python])
    assert {:ok, 1} = Python.call(s, "echo", %{value: 1}, pool: pool)

    assert_receive {:dspex_event, [:dspex, :bridge, :python, :call_start], _,
                    %{session_id: ^s, pool: ^pool}}

    assert_receive {:dspex_event, [:dspex, :bridge, :python, :call_stop], %{duration_us: us},
                    %{ok: true}}

    assert is_integer(us)

    assert {:error, {:python, "RuntimeError", "boom"}} =
             Python.call(s, "raise", %{message: "boom"}, pool: pool)

    assert_receive {:dspex_event, [:dspex, :bridge, :python, :call_exception], _,
                    %{type: "RuntimeError", message: "boom"}}

    {:ok, os_pid} = Python.call(s, "pid", %{}, pool: pool)
    System.cmd("kill", ["-9", Integer.to_string(os_pid)])

    assert_receive {:dspex_event, [:dspex, :bridge, :python, :worker_left], _, %{os_pid: ^os_pid}},
                   5_000

    assert_receive {:dspex_event, [:dspex, :bridge, :python, :worker_restarted], %{restarts: 1}, _},
                   5_000

    assert_receive {:dspex_event, [:dspex, :bridge, :python, :worker_joined], _, %{remote: false}},
                   20_000
  end

  describe "ctx.watch" do
    test "a tool sees the changes of its session's variables while its call lasts",
         %{pool: pool, session: s} do
      watcher =
        Task.async(fn ->
          Python.call(s, "watch_for", %{names: ["temperature"], count: 2},
            pool: pool,
            timeout: 10_000
          )
        end)

      eventually(fn -> watched?(s, :temperature) end, 5_000)
      {:ok, _} = SessionStore.update_variable(s, :temperature, 0.7)
      {:ok, _} = SessionStore.update_variable(s, :temperature, 0.8)

      assert {:ok,
              [
                %{
                  "name" => "temperature",
                  "old" => 0.5,
                  "new" => 0.7,
                  "version" => 2,
                  "lost" => false
                },
                %{
                  "name" => "temperature",
                  "old" => 0.7,
                  "new" => 0.8,
                  "version" => 3,
                  "lost" => false
                }
              ]} = Task.await(watcher, 10_000)

      # The watch ended with the call.
      eventually(fn -> not watched?(s, :temperature) end)
    end

    test "a deleted variable ends its watch with a lost change, not silence",
         %{pool: pool, session: s} do
      {:ok, _} = SessionStore.register_variable(s, :doomed, :integer, 1)

      watcher =
        Task.async(fn ->
          Python.call(s, "watch_for", %{names: ["doomed"], count: 1}, pool: pool, timeout: 10_000)
        end)

      eventually(fn -> watched?(s, :doomed) end, 5_000)
      :ok = SessionStore.delete_variable(s, :doomed)
      assert {:ok, [%{"name" => "doomed", "lost" => true}]} = Task.await(watcher, 10_000)
    end

    test "watching what does not exist is an error in Python", %{pool: pool, session: s} do
      assert {:error, {:python, "NotFound", _}} =
               Python.call(s, "watch_for", %{names: ["nope"]}, pool: pool)

      assert {:error, {:python, "BridgeError", _}} =
               Python.call(s, "watch_for", %{names: []}, pool: pool)
    end
  end

  describe "optimizer runs from Python" do
    test "start, write with the token, report, complete: the best value lands and the lock is free",
         %{pool: pool, session: s} do
      assert {:ok, %{"final" => 0.9, "iterations" => 3, "status" => "running"}} =
               Python.call(s, "optimize", %{name: "temperature", candidates: [0.5, 0.9, 1.2]},
                 pool: pool
               )

      assert {:ok, %{value: 0.9}} = SessionStore.get_variable(s, :temperature)
      assert {:ok, %{holder: nil}} = OptimizerCoordinator.get_lock_info(:temperature, session_id: s)
      assert {:ok, history} = SessionStore.get_history(s, :temperature)
      assert length(history) >= 4
    end

    test "an Elixir optimizer holding the lock refuses Python's run; its writes stay refused",
         %{pool: pool, session: s} do
      {:ok, lock} =
        OptimizerCoordinator.acquire_lock(:temperature, "elixir_opt", self(), session_id: s)

      assert {:ok, %{"refused" => "elixir_opt"}} =
               Python.call(
                 s,
                 "optimize",
                 %{name: "temperature", candidates: [1.0], conflict: "abort"},
                 pool: pool
               )

      assert {:error, {:python, "LockedBy", _}} =
               Python.call(s, "write", %{name: "temperature", value: 1.5}, pool: pool)

      :ok = OptimizerCoordinator.release_lock(:temperature, "elixir_opt", session_id: s)
      assert lock.token > 0
    end

    test "a worker killed mid-run releases the run's lock", %{pool: pool, session: s} do
      task =
        Task.async(fn ->
          Python.call(s, "optimize", %{name: "temperature", candidates: [0.9], hold_ms: 30_000},
            pool: pool,
            timeout: 20_000
          )
        end)

      eventually(
        fn ->
          match?(
            {:ok, %{holder: %{}}},
            OptimizerCoordinator.get_lock_info(:temperature, session_id: s)
          )
        end,
        5_000
      )

      {:ok, os_pid} = Python.call(s, "pid", %{}, pool: pool)
      System.cmd("kill", ["-9", Integer.to_string(os_pid)])
      assert {:error, {:worker_exited, _}} = Task.await(task, 20_000)

      eventually(
        fn ->
          OptimizerCoordinator.get_lock_info(:temperature, session_id: s) ==
            {:ok, %{holder: nil, waiters: []}}
        end,
        5_000
      )
    end

    test "a run is not reachable from another session's calls", %{pool: pool, session: s} do
      other = session!()

      {:ok, lock} =
        OptimizerCoordinator.acquire_lock(:temperature, "elixir_opt", self(), session_id: s)

      {:ok, id} = OptimizerCoordinator.start_optimization(lock)
      on_exit(fn -> OptimizerCoordinator.fail_optimization(id, :test_over) end)

      assert {:error, {:python, "NotFound", _}} =
               Python.call(other, "status_of", %{id: id}, pool: pool)

      assert {:ok, %{"status" => "running", "optimizer_id" => "elixir_opt"}} =
               Python.call(s, "status_of", %{id: id}, pool: pool)
    end
  end

  defp watched?(s, name),
    do: Enum.any?(:ets.lookup(SessionStore.Tables.watchers(), s), &match?({_, ^name, _}, &1))
end
