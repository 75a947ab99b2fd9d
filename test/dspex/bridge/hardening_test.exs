defmodule DSPex.Bridge.HardeningTest do
  @moduledoc """
  One regression test per defect of the hardening review: each call once crashed the VM, a
  session process, a shared Python worker or raised where an error was promised; each now
  gives a clear error and leaves everything else as it was.
  """
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{
    AccessControl,
    Analytics,
    CircuitBreaker,
    DependencyManager,
    Native,
    OptimizerCoordinator,
    PythonWorker,
    RateLimiter,
    SessionStore,
    VariableType
  }

  defp deep(n), do: Enum.reduce(1..n, 1, fn _, acc -> [acc] end)

  defp session_pid(id) do
    [{^id, _, pid, _}] = :ets.lookup(:dspex_bridge_sessions, id)
    pid
  end

  describe "no input crashes the VM" do
    test "a deep term is refused by both frame encoders; 48 levels cross, as every reader allows" do
      pad = String.duplicate("x", 70_000)

      for n <- [49, 230, 100_000] do
        call = {:call, 1, "echo", %{pad: pad, value: deep(n)}, "s", 1_000}

        assert {:error, {:not_serializable, "nested deeper than 48"}} =
                 Native.bridge_encode_dirty(call)

        assert {:error, {:not_serializable, _}} =
                 Native.bridge_encode({:call, 1, "echo", %{v: deep(n)}, "s", 1_000})
      end

      # The args map is the first level.
      assert {:ok, _} =
               Native.bridge_encode_dirty({:call, 1, "echo", %{pad: pad, v: deep(46)}, "s", 1})

      # Frames from a worker: nesting is refused at the same depth, and no depth crashes.
      assert {:ok, {:result, 7, {:ok, value}}} = Native.bridge_decode(result_frame(7, 48))
      assert value == deep(48)
      assert {:error, {:invalid_frame, _}} = Native.bridge_decode(result_frame(7, 49))
      assert {:error, {:invalid_frame, _}} = Native.bridge_decode_dirty(result_frame(7, 100_000))
    end

    test "through the public API: the pool answers, the interpreter lives" do
      {:ok, _} = PythonWorker.start_pool(:hardening_deep, python_opts(size: 1))
      on_exit(fn -> PythonWorker.stop_pool(:hardening_deep) end)
      eventually(fn -> PythonWorker.call(:hardening_deep, "ping", %{}) == {:ok, "pong"} end, 20_000)
      [os_pid] = PythonWorker.os_pids(:hardening_deep)
      pad = String.duplicate("x", 70_000)

      assert {:error, {:not_serializable, _}} =
               PythonWorker.call(:hardening_deep, "echo", %{pad: pad, value: deep(230)})

      assert {:ok, value} = PythonWorker.call(:hardening_deep, "echo", %{value: deep(40)})
      assert value == deep(40)
      assert [^os_pid] = PythonWorker.os_pids(:hardening_deep)
    end

    test "a window size is bounded before anything is allocated" do
      config = fn window ->
        {window, 0.5, nil, 1, 1, 2.0, 1, 0.0, 1, 1, 1}
      end

      assert {:error, {:invalid_config, :too_large}} =
               Native.breaker_new(config.({:time, 1_000_000_000, 4_294_967_295, 1}))

      assert {:error, {:invalid_config, :too_large}} =
               Native.breaker_new(config.({:time, 1_000_000_000, 100_000_000, 1}))

      assert {:error, {:invalid_config, :too_large}} =
               Native.breaker_new(config.({:count, 4_294_967_295, 1}))

      assert {:ok, _} = Native.breaker_new(config.({:time, 1_000_000_000, 10_000, 1}))

      assert {:error, {:invalid_option, {:window, {:count, 1_000_001}}}} =
               CircuitBreaker.start_breaker(:hardening_big, window: {:count, 1_000_001})
    end

    test "improper lists are errors, never panics" do
      improper = {:call, 1, "echo", %{v: [1 | 2]}, "s", 1}
      assert {:error, {:not_serializable, "improper list"}} = Native.bridge_encode(improper)
      assert {:error, {:not_serializable, "improper list"}} = Native.bridge_encode_dirty(improper)
      assert_raise ArgumentError, fn -> Native.acl_validate([1 | 2]) end
      assert {:error, {:invalid_rule, 0, {:not_a_list, _}}} = AccessControl.validate_rules([1 | 2])

      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      {:ok, snapshot} = SessionStore.export_session(s)

      bad =
        reframe(snapshot, fn p ->
          put_in(p, [:session, :access], [{:x, :private, [1 | 2]}])
        end)

      assert {:error, {:invalid_snapshot, _}} =
               SessionStore.import_session(bad, session_id: unique_id())
    end
  end

  describe "one bad call does not take down others" do
    setup do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      {:ok, _} = SessionStore.register_variable(s, :y, :integer, 2)
      {:ok, session: s, pid: session_pid(s)}
    end

    test "calls that crashed the session process", %{session: s, pid: pid} do
      f = fn _ -> 1 end
      assert {:error, {:invalid_rule_id, <<0xFF>>}} = AccessControl.remove_rule({s, :x}, <<0xFF>>)

      assert {:error, {:variable_not_found, :π}} = DependencyManager.add_dependency(s, :π, :x)

      assert {:error, :dependency_not_found} = DependencyManager.remove_dependency(s, :π, :x)
      # nil and false are atoms, so ids: variables that do not exist (an Enum.find read them
      # as "nothing missing").
      assert {:error, {:variable_not_found, nil}} =
               DependencyManager.define_computed(s, :x, f, [nil])

      assert {:error, {:variable_not_found, false}} =
               SessionStore.register_variable(s, :z, :integer, nil, compute: {f, [false]})

      assert {:error, {:variable_not_found, :nope}} =
               SessionStore.register_variable(s, :z, :integer, nil, compute: {f, [:x, :nope]})

      assert {:error, {:invalid_option, {:updates, nil}}} = SessionStore.update_variables(s, [nil])

      assert {:error, {:invalid_option, {:updates, false}}} =
               SessionStore.update_variables(s, [false])

      assert session_pid(s) == pid
      assert {:ok, %{value: 1, version: 1}} = SessionStore.get_variable(s, :x)
    end

    test "a session that crashes is restarted whole; one that keeps crashing is removed whole; others never notice",
         %{session: s} do
      bystander = session!()
      {:ok, _} = SessionStore.register_variable(bystander, :b, :integer, 0)
      {:ok, _} = SessionStore.watch(bystander, :b)
      {:ok, _} = SessionStore.watch(s, :x)
      sessions_sup = Process.whereis(DSPex.Bridge.SessionStore.Sessions)

      # Three crashes within the window: each time the session comes back over its rows,
      # and the watcher is still told of writes.
      for i <- 1..3 do
        old = session_pid(s)
        Process.exit(old, :kill)

        eventually(fn ->
          match?([{_, _, p, _}] when p != old, :ets.lookup(:dspex_bridge_sessions, s))
        end)

        assert {:ok, %{value: v}} = SessionStore.update_variable(s, :x, 10 + i)
        assert v == 10 + i
        assert_receive {:dspex_variable_changed, ^s, :x, %{new: ^v}}
        {:ok, _} = SessionStore.update_variable(bystander, :b, i)
        assert_receive {:dspex_variable_changed, ^bystander, :b, %{new: ^i}}
      end

      assert {:ok, [%{version: 4} | _]} = SessionStore.get_history(s, :x)

      # The fourth within 5 s: the session is removed, rows and all; its watcher is told.
      Process.exit(session_pid(s), :kill)
      assert_receive {:dspex_watch_lost, ^s, :x, :session_crashed}, 5_000
      assert {:error, :session_not_found} = SessionStore.get_variable(s, :x)
      assert [] = :ets.match(:dspex_bridge_variables, {{s, :"$1"}, :_, :_})
      assert [] = :ets.lookup(:dspex_bridge_watchers, s)

      # The id is free again, and nothing of the old session comes back with it.
      {:ok, ^s} = SessionStore.create_session(s)
      assert {:ok, []} = SessionStore.list_variables(s)

      # The bystander and the supervisor never noticed.
      assert Process.whereis(DSPex.Bridge.SessionStore.Sessions) == sessions_sup
      {:ok, _} = SessionStore.update_variable(bystander, :b, 99)
      assert_receive {:dspex_variable_changed, ^bystander, :b, %{new: 99}}
    end

    test "a call that raises inside the session is an error; the session goes on", %{
      session: s,
      pid: pid
    } do
      # A compute function that raises is a stale mark, not a crash; a value that no
      # clause handles reaches the session's guard.
      {:ok, _} =
        SessionStore.register_variable(s, :boom, :integer, 0,
          compute: {fn %{x: x} -> if x > 1, do: raise("no"), else: x end, [:x]}
        )

      assert {:ok, _} = SessionStore.update_variable(s, :x, 5)
      assert {:ok, %{stale: {:compute_failed, _}}} = SessionStore.get_variable(s, :boom)
      assert {:error, {:internal_error, _}} = GenServer.call(pid, {:update, :not_a_list, %{}})
      assert session_pid(s) == pid
      assert {:ok, %{value: 5}} = SessionStore.get_variable(s, :x)
    end

    test "a shared Python worker sees only well-formed requests" do
      {:ok, _} = PythonWorker.start_pool(:hardening_shared, python_opts(size: 1))
      on_exit(fn -> PythonWorker.stop_pool(:hardening_shared) end)

      eventually(
        fn -> PythonWorker.call(:hardening_shared, "ping", %{}) == {:ok, "pong"} end,
        20_000
      )

      [os_pid] = PythonWorker.os_pids(:hardening_shared)

      # Another caller's request in flight on the same (only) worker.
      slow = Task.async(fn -> PythonWorker.call(:hardening_shared, "sleep", %{ms: 300}, 10_000) end)
      Process.sleep(50)

      assert {:error, {:invalid_option, {:timeout, _}}} =
               PythonWorker.call(:hardening_shared, "ping", %{}, 2 ** 63)

      assert {:error, {:not_serializable, "improper list"}} =
               PythonWorker.call(:hardening_shared, "echo", %{value: [1 | 2]})

      big = :binary.copy("x", 70 * 1024 * 1024)

      assert {:error, {:request_too_large, _, _}} =
               PythonWorker.call(:hardening_shared, "echo", %{value: big})

      assert {:ok, 300} = Task.await(slow, 15_000)
      assert [^os_pid] = PythonWorker.os_pids(:hardening_shared)
      assert {:ok, "pong"} = PythonWorker.call(:hardening_shared, "ping", %{})
    end

    test "pool names are atoms or ids; nothing starts for junk" do
      for junk <- [{:a}, [1], %{}, 1.5, self(), "", :binary.copy("n", 256)] do
        assert {:error, {:invalid_pool_name, ^junk}} = PythonWorker.start_pool(junk, size: 1)
      end

      assert {:error, {:invalid_option, {:size, 10_000}}} =
               PythonWorker.start_pool(:hardening_many, size: 10_000)
    end

    test "errors where errors are promised" do
      assert {:error, {:invalid_option, {:window, {:time, _}}}} =
               CircuitBreaker.start_breaker(:hardening_b1, window: {:time, 2 ** 50})

      assert {:error, {:invalid_option, {:slow_call_ms, _}}} =
               CircuitBreaker.start_breaker(:hardening_b2, slow_call_ms: 2 ** 60)

      assert {:error, {:invalid_option, {:backoff, _}}} =
               CircuitBreaker.start_breaker(:hardening_b3, backoff: 2 ** 1100)

      assert {:error, {:invalid_option, {:capacity, _}}} =
               RateLimiter.start_limiter(:hardening_l1, capacity: 2 ** 1100)

      assert {:error, {:invalid_constraints, {:not_a_map, :nope}}} =
               VariableType.validate(:float, 1.0, :nope)

      assert {:error, {:invalid_value, {:out_of_range, :float}}} =
               VariableType.validate(:float, 2 ** 1100, %{})

      assert {:error, {:invalid_name, <<0xFF>>}} = Analytics.summary(<<0xFF>>, :last_minute)
      assert {:error, {:invalid_alert, [1]}} = Analytics.put_alert([1])

      assert {:error, {:not_a_listener, _}} = Analytics.HTTPExporter.stop({self(), make_ref()})

      # A ttl past the VM's timer limit once crashed the new session's process.
      assert {:error, {:invalid_option, {:ttl, _}}} =
               SessionStore.create_session(unique_id(), ttl: 2 ** 40)
    end

    test "atoms outside Latin-1 are ids like any other" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :温度, :float, 0.5)
      assert {:ok, %{allowed: false}} = AccessControl.explain({s, :温度}, :"ünï_😀", :read)
      assert {:ok, %{allowed: true, decided_by: :owner}} = AccessControl.explain({s, :温度}, s, :read)
      {:ok, lock} = OptimizerCoordinator.acquire_lock(:温度, :优化, self(), session_id: s)
      assert {:error, {:locked_by, :优化}} = SessionStore.update_variable(s, :温度, 0.7)
      assert {:ok, _} = SessionStore.update_variable(s, :温度, 0.7, lock_token: lock.token)
      assert :ok = OptimizerCoordinator.release_lock(:温度, :优化, session_id: s)
    end
  end

  describe "snapshots carry no code" do
    setup do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :a, :integer, 1)
      {:ok, _} = SessionStore.register_variable(s, :b, :integer, 2)
      {:ok, snapshot} = SessionStore.export_session(s)
      {:ok, session: s, snapshot: snapshot}
    end

    test "a closure in a snapshot never runs", %{snapshot: snapshot} do
      marker = Path.join(System.tmp_dir!(), "dspex_hardening_#{System.unique_integer([:positive])}")
      {closure, _} = Code.eval_string(~s|fn _ -> File.write!(#{inspect(marker)}, "ran"); 1 end|)

      for compute <- [{closure, [:a]}, {&File.write!/2, [:a]}, {fn _ -> 1 end, [:a]}] do
        bad = reframe(snapshot, fn p -> update_var(p, :b, &put_elem(&1, 9, compute)) end)
        id = unique_id()

        assert {:error, {:invalid_snapshot, {:forbidden_term, :fun}}} =
                 SessionStore.import_session(bad, session_id: id)

        assert {:error, :session_not_found} = SessionStore.update_variable(id, :a, 5)
      end

      refute File.exists?(marker)
    end

    test "pids, refs and ports anywhere are refused", %{snapshot: snapshot} do
      port = Port.open({:spawn, "true"}, [])

      for {term, kind} <- [{self(), :pid}, {make_ref(), :reference}, {port, :port}] do
        bad =
          reframe(snapshot, fn p -> update_var(p, :a, &put_elem(&1, 7, %{deep: [{1, term}]})) end)

        assert {:error, {:invalid_snapshot, {:forbidden_term, ^kind}}} =
                 SessionStore.import_session(bad, session_id: unique_id())
      end
    end

    test "a compute reference imports only if the code is there", %{snapshot: snapshot} do
      ok =
        reframe(snapshot, fn p ->
          update_var(p, :b, &put_elem(&1, 9, {{DSPex.Bridge.TestComputes, :add, [1]}, [:a]}))
        end)

      id = unique_id()
      assert {:ok, ^id} = SessionStore.import_session(ok, session_id: id)
      on_exit(fn -> SessionStore.delete_session(id) end)
      {:ok, _} = SessionStore.update_variable(id, :a, 41)
      assert {:ok, 42} = SessionStore.get_value(id, :b)

      for ref <- [
            {DSPex.Bridge.TestComputes, :missing},
            {:no_such_module_here, :f},
            {:erlang, :halt, [1, 2]}
          ] do
        bad = reframe(snapshot, fn p -> update_var(p, :b, &put_elem(&1, 9, {ref, [:a]})) end)

        assert {:error, {:invalid_snapshot, {:bad_variable, :b, _}}} =
                 SessionStore.import_session(bad, session_id: unique_id())
      end

      Application.put_env(:dspex_bridge, :snapshot_compute_modules, [SomeOther])
      on_exit(fn -> Application.delete_env(:dspex_bridge, :snapshot_compute_modules) end)

      assert {:error, {:invalid_snapshot, {:bad_variable, :b, {:module_not_allowed, _}}}} =
               SessionStore.import_session(ok, session_id: unique_id())
    end

    test "inconsistent snapshots are refused as the calls that built them would be",
         %{snapshot: snapshot} do
      cases = [
        {fn p -> %{p | variables: p.variables ++ [hd(p.variables)]} end, :duplicate_variable},
        {fn p -> put_in(p, [:session, :max_variables], 1) end, :too_many_variables},
        {fn p -> put_in(p, [:session, :history_limit], 1_000_000_000) end, :bad_session},
        {fn p -> put_in(p, [:session, :ttl], 2 ** 40) end, :bad_session},
        {fn p -> update_var(p, :a, &put_elem(&1, 3, 2 ** 200)) end, :bad_variable},
        {fn p -> %{p | history: [{:ghost, [{1, 1, 0, :register}]} | p.history]} end, :bad_history},
        {fn p -> update_history(p, :a, [{1, "not an integer", 0, :register}]) end, :bad_history},
        {fn p -> update_history(p, :a, [{5, 1, 0, :update}]) end, :bad_history},
        {fn p -> update_history(p, :a, [{1, 1, 0, :register}, {1, 1, 0, :register}]) end,
         :bad_history},
        {fn p -> %{p | history: p.history ++ [hd(p.history)]} end, :duplicate},
        {fn p -> put_in(p, [:session, :access], [{:ghost, :private, []}]) end, :bad_access}
      ]

      for {change, reason} <- cases do
        bad = reframe(snapshot, change)
        id = unique_id()

        assert {:error, {:invalid_snapshot, detail}} =
                 SessionStore.import_session(bad, session_id: id)

        assert reason == if(is_tuple(detail), do: elem(detail, 0), else: detail), inspect(detail)
        assert {:error, :session_not_found} = SessionStore.get_session(id)
      end
    end
  end

  describe "identity is exact" do
    test "an atom, a string and a lossy look-alike are three different sessions" do
      for {owner, impostors} <- [
            {"bob_#{System.unique_integer([:positive])}", []},
            {"dave_é_#{System.unique_integer([:positive])}", []},
            {"carol_\xFF", ["carol_\xFE", "carol_\uFFFD"]}
          ] do
        SessionStore.delete_session(owner)
        {:ok, ^owner} = SessionStore.create_session(owner)
        on_exit(fn -> SessionStore.delete_session(owner) end)
        {:ok, _} = SessionStore.register_variable(owner, :secret, :string, "s")
        atom = String.to_atom(if String.valid?(owner), do: owner, else: "carol_ÿ")

        for caller <- [atom | impostors] do
          assert {:error, :access_denied} =
                   SessionStore.get_variable(owner, :secret, caller: caller)

          assert {:ok, %{allowed: false, decided_by: {:default, :private}}} =
                   AccessControl.explain({owner, :secret}, caller, :read)
        end

        assert {:ok, %{value: "s"}} = SessionStore.get_variable(owner, :secret, caller: owner)
        assert {:ok, %{decided_by: :owner}} = AccessControl.explain({owner, :secret}, owner, :read)
      end
    end

    test "force_release is the owner's; the audit log shows a caller its own decisions" do
      s = session!()
      other = session!()
      {:ok, _} = SessionStore.register_variable(s, :v, :integer, 1)
      {:ok, _} = SessionStore.register_variable(other, :w, :integer, 1)
      {:ok, _} = OptimizerCoordinator.acquire_lock(:v, "opt", self(), session_id: s)

      assert {:error, :access_denied} =
               OptimizerCoordinator.force_release(:v, :forced, session_id: s, caller: other)

      assert {:ok, %{holder: %{optimizer_id: "opt"}}} =
               OptimizerCoordinator.get_lock_info(:v, session_id: s)

      assert :ok = OptimizerCoordinator.force_release(:v, :forced, session_id: s, caller: s)

      third = unique_id("third")
      {:error, :access_denied} = SessionStore.get_variable(s, :v, caller: third)
      {:error, :access_denied} = SessionStore.get_variable(other, :w, caller: s)
      {:ok, mine} = AccessControl.audit(caller: third, limit: 1_000)
      assert mine != [] and Enum.all?(mine, &(&1.session === third))
      {:ok, owners} = AccessControl.audit(caller: other, limit: 1_000)
      assert Enum.any?(owners, &(&1.session === s and &1.variable === {other, :w}))
      refute Enum.any?(owners, &(&1.session === third))
    end
  end

  # Protobuf bytes of a Result frame whose value is `n` lists around the integer 1.
  defp result_frame(id, n) do
    value =
      Enum.reduce(1..n, field(3, :varint, 2), fn _, inner ->
        field(7, :bytes, field(1, :bytes, inner))
      end)

    field(4, :bytes, field(1, :varint, id) <> field(2, :bytes, value))
  end

  defp field(tag, :varint, n), do: varint(tag * 8) <> varint(n)
  defp field(tag, :bytes, bin), do: varint(tag * 8 + 2) <> varint(byte_size(bin)) <> bin

  defp varint(n) when n < 128, do: <<n>>
  defp varint(n), do: <<Bitwise.bor(Bitwise.band(n, 127), 128)>> <> varint(Bitwise.bsr(n, 7))

  # A snapshot re-framed after `change` is applied to its decoded (format 2) payload.
  defp reframe(snapshot, change) do
    {:ok, _version, payload} = Native.snapshot_decode(snapshot)
    changed = payload |> :erlang.binary_to_term() |> change.()
    {:ok, frame} = Native.snapshot_encode(:erlang.term_to_binary(changed))
    frame
  end

  defp update_var(payload, name, fun) do
    %{
      payload
      | variables: Enum.map(payload.variables, &if(elem(&1, 0) == name, do: fun.(&1), else: &1))
    }
  end

  defp update_history(payload, name, entries) do
    %{
      payload
      | history:
          Enum.map(payload.history, fn {n, es} -> if n == name, do: {n, entries}, else: {n, es} end)
    }
  end
end
