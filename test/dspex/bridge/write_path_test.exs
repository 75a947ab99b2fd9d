defmodule DSPex.Bridge.WritePathTest do
  @moduledoc """
  One write path per session, on real `:peer` nodes: what a session holds changes only
  through its owner, reaches its replicas, and survives failover and migration.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{DependencyManager, HAManager, SessionStore}
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
end
