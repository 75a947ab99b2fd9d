defmodule DSPex.Bridge.WritePathTest do
  @moduledoc """
  One write path per session, on real `:peer` nodes: what a session holds changes only
  through its owner, reaches its replicas, and survives failover and migration.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{
    AccessControl,
    DependencyManager,
    HAManager,
    OptimizerCoordinator,
    SessionStore
  }

  alias DSPex.Bridge.HAManager.LocalCluster
  import DSPex.Bridge.TestHelpers, only: [eventually: 2]

  @moduletag timeout: 180_000

  setup_all do
    :ok = LocalCluster.ensure_distributed(:dspex_write_path_test)
    :ok
  end

  defp peers(names) do
    {:ok, nodes} = LocalCluster.start_peers(names)
    on_exit(fn -> LocalCluster.stop_peers(nodes) end)
    nodes
  end

  defp store(node, fun, args), do: :erpc.call(node, SessionStore, fun, args, 30_000)
  defp deps(node, fun, args), do: :erpc.call(node, DependencyManager, fun, args, 30_000)
  defp locks(node, fun, args), do: :erpc.call(node, OptimizerCoordinator, fun, args, 30_000)
  defp acl(node, fun, args), do: :erpc.call(node, AccessControl, fun, args, 30_000)
  defp ha(node, fun, args), do: :erpc.call(node, HAManager, fun, args, 60_000)

  defp new_session(node, names) do
    id = "wp_#{System.unique_integer([:positive])}"
    {:ok, ^id} = store(node, :create_session, [id])
    for n <- names, do: {:ok, _} = store(node, :register_variable, [id, n, :integer, 0])
    {:ok, _} = ha(node, :register_session, [id])
    id
  end

  test "edges added after registration, from any node, survive failover and migration" do
    [a, b] = peers(["wp_edges_a", "wp_edges_b"])
    id = new_session(a, ~w(x y z w))

    # On the owner (the fast path is turned away: the edge goes through the session) ...
    assert :ok = deps(a, :add_dependency, [id, "x", "y"])
    # ... and from the other nodes, routed to the owner.
    assert {:ok, 1} = deps(b, :add_dependencies, [id, [{"y", "z"}]])
    assert :ok = DependencyManager.add_dependency(id, "z", "w", :data, timeout: 5_000)
    assert {:error, :would_create_cycle} = deps(b, :add_dependency, [id, "w", "x"])
    assert {:ok, ["x", "y", "z"]} = deps(b, :get_upstream, [id, "w"])

    # The owner dies: the replica takes over with every edge, and refuses the same cycle.
    :ok = LocalCluster.kill(a)
    eventually(fn -> HAManager.get_session_owner(id) == {:ok, b} end, 30_000)
    assert {:ok, ["x", "y", "z"]} = deps(b, :get_upstream, [id, "w"])
    assert {:error, :would_create_cycle} = deps(b, :add_dependency, [id, "w", "x"])
    assert {:error, :would_create_cycle} = DependencyManager.add_dependency(id, "z", "x")

    # Written after the failover, then moved to a third node by migration.
    [c] = peers(["wp_edges_c"])
    eventually(fn -> Map.has_key?(ha(b, :members, []), c) end, 10_000)
    {:ok, _} = store(b, :register_variable, [id, "v", :integer, 0])
    assert :ok = deps(b, :add_dependency, [id, "w", "v"])
    assert {:ok, _} = ha(b, :migrate_session, [id, c])
    assert {:ok, ^c} = HAManager.get_session_owner(id)
    assert {:ok, ["x", "y", "z", "w"]} = deps(c, :get_upstream, [id, "v"])
    assert {:error, :would_create_cycle} = deps(c, :add_dependency, [id, "v", "x"])
  end

  test "a watcher on a third node keeps receiving changes across a migration and a failover" do
    [a, b, c] = peers(["wp_watch_a", "wp_watch_b", "wp_watch_c"])
    id = new_session(a, ~w(x))
    test = self()

    # The watcher lives on c; the session moves a -> b by migration, then b dies.
    watcher = Node.spawn(c, DSPex.Bridge.TestWatcher, :start, [id, "x", test])

    assert_receive :watching, 10_000
    {:ok, _} = store(a, :update_variable, [id, "x", 1])
    assert_receive {:seen, {:dspex_variable_changed, ^id, "x", %{new: 1, version: 2}}}, 5_000

    assert {:ok, _} = ha(a, :migrate_session, [id, b])
    {:ok, _} = store(b, :update_variable, [id, "x", 2])
    assert_receive {:seen, {:dspex_variable_changed, ^id, "x", %{new: 2, version: 3}}}, 5_000

    # The owner b dies; its replica takes over and goes on telling the watcher.
    :ok = LocalCluster.kill(b)
    eventually(fn -> match?({:ok, o} when o in [a, c], HAManager.get_session_owner(id)) end, 30_000)
    {:ok, owner} = HAManager.get_session_owner(id)
    {:ok, _} = store(owner, :update_variable, [id, "x", 3])

    assert_receive {:seen, {:dspex_variable_changed, ^id, "x", %{old: 2, new: 3, version: 4}}},
                   5_000

    # A session that ends for good says so to its watchers.
    :ok = store(owner, :delete_session, [id])
    assert_receive {:seen, {:dspex_watch_lost, ^id, "x", :session_deleted}}, 5_000
    Process.exit(watcher, :kill)
  end

  test "a lock taken on a node that does not own the session holds on the owner" do
    [a, b] = peers(["wp_lock_a", "wp_lock_b"])
    id = new_session(a, ~w(x))
    on = [session_id: id]
    holder = Node.spawn(b, Process, :sleep, [:infinity])

    assert {:ok, %{token: token}} = locks(b, :acquire_lock, ["x", "opt_b", holder, on])
    assert locks(a, :locked?, ["x", on])

    # Writers on the owner (and anywhere) without the token are refused; the holder's token
    # works from its own node.
    assert {:error, {:locked_by, "opt_b"}} = store(a, :update_variable, [id, "x", 1])
    assert {:error, {:locked_by, "opt_b"}} = SessionStore.update_variable(id, "x", 1)
    assert {:ok, %{value: 2}} = store(b, :update_variable, [id, "x", 2, [lock_token: token]])

    assert {:error, :stale_token} =
             store(a, :update_variable, [id, "x", 3, [lock_token: token + 1]])

    # Another optimizer, on a third node, is refused or waits for it.
    assert {:error, {:lock_held_by, "opt_b"}} =
             OptimizerCoordinator.acquire_lock(
               "x",
               "opt_t",
               self(),
               on ++ [conflict_resolution: :abort]
             )

    # (The waiting is done by a task; the lock is held for this test's process.)
    test = self()

    waiter =
      Task.async(fn ->
        OptimizerCoordinator.acquire_lock("x", "opt_t", test, on ++ [timeout: 20_000])
      end)

    eventually(fn -> match?({:ok, %{waiters: [_]}}, locks(a, :get_lock_info, ["x", on])) end, 5_000)

    # A run on the lock lives on the owner and answers from every node.
    lock = %OptimizerCoordinator.Lock{
      session_id: id,
      var_id: "x",
      optimizer_id: "opt_b",
      token: token
    }

    assert {:ok, run} = locks(b, :start_optimization, [lock, [objective: {:maximize, :score}]])
    assert String.ends_with?(run, "@#{a}")
    assert :ok = locks(b, :report_progress, [run, 1, 2, %{score: 0.5}])
    assert {:ok, %{iteration: 1, best: 0.5}} = OptimizerCoordinator.get_optimization_status(run)

    # Released from this node, which neither owns the session nor holds the lock: the waiter
    # here gets it.
    assert :ok = OptimizerCoordinator.release_lock("x", "opt_b", on)
    assert {:ok, %{optimizer_id: "opt_t", token: waiter_token}} = Task.await(waiter, 30_000)
    assert waiter_token > token
    assert {:ok, %{value: 4}} = SessionStore.update_variable(id, "x", 4, lock_token: waiter_token)
    assert :ok = OptimizerCoordinator.release_lock("x", "opt_t", on)

    # The holder's death on its node releases its lock on the owner, and the release
    # reaches the replica (b) as the next write of the session.
    assert {:ok, _} = locks(b, :acquire_lock, ["x", "opt_b", holder, on])
    {:ok, %{seq: before}} = :erpc.call(b, HAManager.Replication, :held, [id])
    Process.exit(holder, :kill)
    eventually(fn -> not locks(a, :locked?, ["x", on]) end, 5_000)

    eventually(
      fn ->
        match?(
          {:ok, %{seq: seq}} when seq > before,
          :erpc.call(b, HAManager.Replication, :held, [id])
        )
      end,
      5_000
    )

    # So when the owner fails, the new owner holds nothing for the dead holder (its
    # five-minute lease would keep the variable locked otherwise).
    :ok = LocalCluster.kill(a)
    eventually(fn -> HAManager.get_session_owner(id) == {:ok, b} end, 30_000)
    refute locks(b, :locked?, ["x", on])
    assert {:ok, %{value: 5}} = store(b, :update_variable, [id, "x", 5])
  end

  test "a holder that dies after its session moved or failed over still frees its lock" do
    [a, b, c] = peers(["wp_mon_a", "wp_mon_b", "wp_mon_c"])
    id = new_session(a, ~w(x y))
    on = [session_id: id]
    # The holders run on c, for locks taken on the owner a.
    [h1, h2] = for _ <- 1..2, do: Node.spawn(c, Process, :sleep, [:infinity])
    assert {:ok, _} = locks(c, :acquire_lock, ["x", "opt_1", h1, on])
    assert {:ok, _} = locks(c, :acquire_lock, ["y", "opt_2", h2, on])

    # Migrated to b: b holds both locks and watches their holders.
    assert {:ok, _} = ha(a, :migrate_session, [id, b])
    assert locks(b, :locked?, ["x", on]) and locks(b, :locked?, ["y", on])
    Process.exit(h1, :kill)
    eventually(fn -> not locks(b, :locked?, ["x", on]) end, 5_000)

    # b fails: the promoted replica holds "y" and watches its holder too.
    :ok = LocalCluster.kill(b)
    eventually(fn -> match?({:ok, o} when o in [a, c], HAManager.get_session_owner(id)) end, 30_000)
    {:ok, owner} = HAManager.get_session_owner(id)
    assert {:error, {:locked_by, "opt_2"}} = store(owner, :update_variable, [id, "y", 1])
    Process.exit(h2, :kill)
    eventually(fn -> not locks(owner, :locked?, ["y", on]) end, 5_000)
    assert {:ok, %{value: 2}} = store(owner, :update_variable, [id, "y", 2])
  end

  test "policies and modes set from any node live with the session and survive failover" do
    [a, b] = peers(["wp_acl_a", "wp_acl_b"])
    id = new_session(a, ~w(x secret))
    reader = "reader_#{System.unique_integer([:positive])}"
    rule = [id: "readers", session_pattern: {:exact, reader}, permissions: [:read], effect: :allow]

    # Set from b and from this node, neither of which holds the session.
    assert :ok = acl(b, :add_rule, [{id, "x"}, rule, []])
    assert :ok = AccessControl.set_access_mode({id, "secret"}, :public)
    assert {:ok, %{mode: :private, rules: [_]}} = acl(b, :get_policy, [{id, "x"}, []])

    for node <- [a, b] do
      assert :ok = acl(node, :check_permission, [{id, "x"}, reader, :read, %{}])

      assert {:error, :access_denied} =
               acl(node, :check_permission, [{id, "x"}, reader, :write, %{}])
    end

    assert {:ok, [:read]} = AccessControl.get_permissions({id, "x"}, reader)

    # Batches from a node that does not hold the session: the owner decides them in one call.
    requests = [{{id, "x"}, :read}, {{id, "x"}, :write}, {{id, "secret"}, :read}, :junk]

    assert [
             {{^id, "x"}, :read, :ok},
             {{^id, "x"}, :write, {:error, :access_denied}},
             {{^id, "secret"}, :read, :ok},
             {:junk, nil, {:error, {:invalid_request, :junk}}}
           ] = AccessControl.check_permissions_batch(requests, reader)

    assert [{^id, "x"}, {^id, "secret"}] =
             acl(b, :filter_accessible_variables, [[{id, "x"}, {id, "secret"}], reader, :read, %{}])

    assert {:ok, %{value: 0}} = store(b, :get_variable, [id, "x", [caller: reader]])

    # The owner dies; the replica decides the same.
    :ok = LocalCluster.kill(a)
    eventually(fn -> HAManager.get_session_owner(id) == {:ok, b} end, 30_000)
    assert :ok = acl(b, :check_permission, [{id, "x"}, reader, :read, %{}])

    assert {:error, :access_denied} =
             acl(b, :check_permission, [{id, "x"}, "someone_else", :read, %{}])

    assert :ok = AccessControl.check_permission({id, "secret"}, "anyone", :read)
    assert {:ok, %{mode: :public}} = AccessControl.get_policy({id, "secret"})
  end

  test "linearizable writes: every acknowledged CAS write is in the new owner's history, in order" do
    [a, b, c] = peers(["wp_lin_a", "wp_lin_b", "wp_lin_c"])
    names = ~w(v1 v2 v3)
    id = "wp_#{System.unique_integer([:positive])}"
    {:ok, ^id} = store(a, :create_session, [id, [history_limit: 10_000]])
    for n <- names, do: {:ok, _} = store(a, :register_variable, [id, n, :string, "init"])
    {:ok, _} = ha(a, :register_session, [id])
    test = self()

    # Two writers on each of b and c, racing on three variables.
    writers =
      for node <- [b, c], w <- 1..2 do
        tag = "#{node}/#{w}"

        Task.async(fn ->
          :erpc.call(node, DSPex.Bridge.TestWriters, :cas, [id, names, tag, 300, test], 120_000)
        end)
      end

    # The owner dies mid-run, once some writes are acknowledged.
    for _ <- 1..100, do: assert_receive(:progress, 30_000)

    :ok = LocalCluster.kill(a)
    acked = writers |> Task.await_many(150_000) |> List.flatten()
    eventually(fn -> match?({:ok, o} when o in [b, c], HAManager.get_session_owner(id)) end, 30_000)
    {:ok, owner} = HAManager.get_session_owner(id)
    # Every writer got all its writes acknowledged, most of them by the new owner.
    assert length(acked) == 4 * 300

    for name <- names do
      {:ok, history} = store(owner, :get_history, [id, name, []])
      by_version = Map.new(history, &{&1.version, &1.value})
      mine = for {^name, value, version} <- acked, do: {version, value}

      # Each acknowledged write holds its version in the new owner's history ...
      for {version, value} <- mine,
          do:
            assert(
              by_version[version] == value,
              "#{name} v#{version}: #{inspect(value)} lost; history has #{inspect(by_version[version])}, " <>
                "acked at that version: #{inspect(for {^version, v} <- mine, do: v)}; " <>
                "history versions #{inspect(Enum.take(Enum.sort(Map.keys(by_version)), 5))}..#{length(history)}"
            )

      # ... no version was acknowledged twice ...
      versions = Enum.map(mine, &elem(&1, 0))
      assert length(Enum.uniq(versions)) == length(versions)

      # ... and each writer's acknowledgements come in version order (real-time order).
      for {tag, _} <- Enum.group_by(mine, fn {_, v} -> v |> String.split("-") |> hd() end) do
        own = for {v, value} <- mine, String.starts_with?(value, tag <> "-"), do: v
        assert own == Enum.sort(own)
      end
    end
  end

  test "a lock held after registration survives failover, with its token" do
    [a, b] = peers(["wp_lockfo_a", "wp_lockfo_b"])
    id = new_session(a, ~w(x y))
    on = [session_id: id]

    # Taken from this node (neither owner nor replica), on the owner; another one taken and
    # given back, which the new owner must not hold.
    assert {:ok, %{token: token}} = OptimizerCoordinator.acquire_lock("x", "opt", self(), on)
    assert {:ok, _} = OptimizerCoordinator.acquire_lock("y", "opt_y", self(), on)
    assert :ok = OptimizerCoordinator.release_lock("y", "opt_y", on)
    assert {:ok, %{value: 1}} = SessionStore.update_variable(id, "x", 1, lock_token: token)

    :ok = LocalCluster.kill(a)
    eventually(fn -> HAManager.get_session_owner(id) == {:ok, b} end, 30_000)

    assert {:ok, %{holder: %{optimizer_id: "opt", token: ^token}}} =
             locks(b, :get_lock_info, ["x", on])

    refute locks(b, :locked?, ["y", on])
    assert {:error, {:locked_by, "opt"}} = store(b, :update_variable, [id, "x", 2])

    assert {:ok, %{value: 3, version: 3}} =
             SessionStore.update_variable(id, "x", 3, lock_token: token)

    assert :ok = OptimizerCoordinator.release_lock("x", "opt", on)
    assert {:ok, %{value: 4}} = store(b, :update_variable, [id, "x", 4])
  end

  test "replicas apply writes in sequence: a gap is caught up by a snapshot, never applied around" do
    [a, b] = peers(["wp_seq_a", "wp_seq_b"])
    id = new_session(a, ~w(counter))
    replica = fn -> :erpc.call(b, DSPex.Bridge.HAManager.Replication, :held, [id]) end
    for v <- 1..3, do: {:ok, _} = store(a, :update_variable, [id, "counter", v])
    assert {:ok, %{writes: 3, seq: seq, epoch: epoch}} = replica.()

    # A write that does not follow the last one (as an :async write lost on the way would
    # leave) is refused, and the replica asks the owner for a snapshot.
    op = {:update, [{"counter", 99}], %{expected_versions: %{}}}

    assert {:error, {:gap, ^seq, _}} =
             :erpc.call(b, GenServer, :call, [HAManager, {:replica_op, id, a, epoch, seq + 5, op}])

    eventually(fn -> match?({:ok, %{writes: 0, seq: ^seq}}, replica.()) end, 5_000)
    {:ok, _} = store(a, :update_variable, [id, "counter", 4])
    assert {:ok, %{writes: 1}} = replica.()

    # What the replica holds is exactly the owner's history: it promotes with it.
    :ok = LocalCluster.kill(a)
    eventually(fn -> HAManager.get_session_owner(id) == {:ok, b} end, 30_000)
    {:ok, history} = store(b, :get_history, [id, "counter", []])
    assert Enum.map(history, & &1.value) == [4, 3, 2, 1, 0]
  end
end
