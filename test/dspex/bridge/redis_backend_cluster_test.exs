defmodule DSPex.Bridge.RedisBackendClusterTest do
  @moduledoc """
  Three `:peer` nodes share one Redis server and no HAManager session: a session made on
  one is used on all, with exact versions and compare-and-set across nodes.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{SessionStore, TestRedis, Variable}
  alias DSPex.Bridge.HAManager.LocalCluster
  alias DSPex.Bridge.SessionStore.RedisBackend

  @moduletag timeout: 240_000

  setup_all do
    :ok = LocalCluster.ensure_distributed(:dspex_redis_cluster_test)
    server = TestRedis.start(password: "cluster-pw")
    {:ok, nodes} = LocalCluster.start_peers(["redis_a", "redis_b", "redis_c"])

    for node <- nodes do
      child = {RedisBackend, url: TestRedis.url(server), password: "cluster-pw"}
      {:ok, _} = :erpc.call(node, Supervisor, :start_child, [DSPex.Bridge.Supervisor, child])
    end

    on_exit(fn ->
      LocalCluster.stop_peers(nodes)
      TestRedis.stop(server)
    end)

    %{nodes: nodes, server: server}
  end

  defp on(node, fun, args), do: :erpc.call(node, SessionStore, fun, args, 60_000)

  defp new_session(node) do
    id = "cluster_#{System.unique_integer([:positive])}"
    {:ok, ^id} = on(node, :create_session, [id, [backend: :redis]])
    id
  end

  test "a session made on one node is used on the others, with exact compare-and-set", %{
    nodes: [a, b, c]
  } do
    id = new_session(a)
    {:ok, _} = on(a, :register_variable, [id, :x, :integer, 0, []])

    assert id in on(c, :list_sessions, [])
    assert {:ok, %Variable{value: 0, version: 1}} = on(b, :get_variable, [id, :x, []])

    assert {:ok, %Variable{value: 5, version: 2}} =
             on(c, :update_variable, [id, :x, 5, [expected_version: 1]])

    assert {:error, {:version_mismatch, 2}} =
             on(a, :update_variable, [id, :x, 6, [expected_version: 1]])

    assert {:error, {:session_exists, ^id}} = on(b, :create_session, [id, [backend: :redis]])

    # 3 nodes x 8 processes x 25 read-and-CAS increments: none lost, none doubled.
    tasks =
      for node <- [a, b, c], _ <- 1..8 do
        Task.async(fn ->
          :erpc.call(node, DSPex.Bridge.TestHelpers, :cas_increments, [id, :x, 25], 120_000)
        end)
      end

    Enum.each(tasks, &(:ok = Task.await(&1, 150_000)))
    assert {:ok, %Variable{value: 605, version: 602}} = on(b, :get_variable, [id, :x, []])

    :ok = on(c, :delete_session, [id, []])
    assert {:error, :session_not_found} = on(a, :get_variable, [id, :x, []])
  end

  test "watchers on every node get each change, wherever it was written", %{nodes: [a, b, c]} do
    id = new_session(a)
    {:ok, _} = on(a, :register_variable, [id, :w, :integer, 0, []])
    me = self()
    {:ok, _} = :erpc.call(b, DSPex.Bridge.TestHelpers, :forward_watch, [id, :w, me])
    {:ok, _} = :erpc.call(c, DSPex.Bridge.TestHelpers, :forward_watch, [id, :w, me])

    {:ok, _} = on(a, :update_variable, [id, :w, 1, []])
    {:ok, _} = on(c, :update_variable, [id, :w, 2, []])

    # Two watchers (on b and on c), each told of both writes, in order.
    for _watcher <- 1..2 do
      assert_receive {:dspex_variable_changed, ^id, :w, %{old: 0, new: 1, version: 2}}, 5_000
    end

    for _watcher <- 1..2 do
      assert_receive {:dspex_variable_changed, ^id, :w, %{old: 1, new: 2, version: 3}}, 5_000
    end

    :ok = on(b, :delete_variable, [id, :w, []])
    assert_receive {:dspex_variable_deleted, ^id, :w}, 5_000
    assert_receive {:dspex_variable_deleted, ^id, :w}, 5_000
  end

  test "3 nodes x 32 processes x 200 lock, read, write, unlock cycles on one variable: an exact count",
       %{nodes: nodes} do
    id = new_session(hd(nodes))
    {:ok, _} = on(hd(nodes), :register_variable, [id, :count, :integer, 0, []])
    started = System.monotonic_time(:millisecond)

    tasks =
      for node <- nodes, i <- 1..32 do
        optimizer = "#{node}/#{i}"
        args = [id, :count, optimizer, 200]

        Task.async(fn ->
          :erpc.call(node, DSPex.Bridge.TestHelpers, :lock_increments, args, 200_000)
        end)
      end

    Enum.each(tasks, &(:ok = Task.await(&1, 210_000)))
    elapsed = System.monotonic_time(:millisecond) - started
    IO.puts("\n  19,200 lock cycles over 3 nodes took #{elapsed} ms")

    assert {:ok, %Variable{value: 19_200, version: 19_201}} =
             on(hd(nodes), :get_variable, [id, :count, []])
  end

  test "two nodes adding opposite edges at once never close a cycle together", %{nodes: [a, b, _c]} do
    id = new_session(a)
    pairs = for i <- 1..100, do: {"x#{i}", "y#{i}"}

    for {x, y} <- pairs,
        v <- [x, y],
        do: {:ok, _} = on(a, :register_variable, [id, v, :integer, 0, []])

    add = fn node, from, to ->
      Task.async(fn ->
        :erpc.call(node, DSPex.Bridge.DependencyManager, :add_dependency, [id, from, to], 30_000)
      end)
    end

    # Each pair: x -> y from one node and y -> x from the other, both in flight at once.
    results =
      pairs
      |> Enum.map(fn {x, y} -> {add.(a, x, y), add.(b, y, x)} end)
      |> Enum.map(fn {t1, t2} -> {Task.await(t1, 60_000), Task.await(t2, 60_000)} end)

    for pair <- results do
      assert pair in [{:ok, {:error, :would_create_cycle}}, {{:error, :would_create_cycle}, :ok}]
    end

    # And the graph agrees: one edge per pair.
    for {x, y} <- pairs do
      {:ok, out_x} = :erpc.call(b, DSPex.Bridge.DependencyManager, :get_dependents, [id, x])
      {:ok, out_y} = :erpc.call(b, DSPex.Bridge.DependencyManager, :get_dependents, [id, y])
      assert length(out_x ++ out_y) == 1
    end
  end

  test "a policy change on one node holds at once on every node: no stale allow", %{
    nodes: [a, b, c]
  } do
    id = new_session(a)
    reader = "reader_#{System.unique_integer([:positive])}"
    {:ok, _} = on(a, :register_variable, [id, :p, :integer, 1, [access_mode: :protected]])
    rule = %{id: "w", session_pattern: {:exact, reader}, permissions: [:write]}
    :ok = :erpc.call(a, DSPex.Bridge.AccessControl, :add_rule, [{id, :p}, rule])

    # b and c decide (and keep the policy in their engines).
    assert {:ok, %Variable{value: 1}} = on(b, :get_variable, [id, :p, [caller: reader]])
    assert {:ok, %Variable{value: 2}} = on(c, :update_variable, [id, :p, 2, [caller: reader]])

    for round <- 1..20 do
      :ok = :erpc.call(a, DSPex.Bridge.AccessControl, :remove_rule, [{id, :p}, "w"])
      assert {:error, :access_denied} = on(c, :update_variable, [id, :p, round, [caller: reader]])
      :ok = :erpc.call(a, DSPex.Bridge.AccessControl, :set_access_mode, [{id, :p}, :private])
      assert {:error, :access_denied} = on(b, :get_variable, [id, :p, [caller: reader]])

      :ok = :erpc.call(b, DSPex.Bridge.AccessControl, :set_access_mode, [{id, :p}, :protected])
      :ok = :erpc.call(c, DSPex.Bridge.AccessControl, :add_rule, [{id, :p}, rule])
      assert {:ok, _} = on(a, :update_variable, [id, :p, 100 + round, [caller: reader]])
      assert {:ok, %Variable{value: v}} = on(b, :get_variable, [id, :p, [caller: reader]])
      assert v == 100 + round
    end
  end

  test "a variable re-registered on one node is never written through another node's old schema",
       %{nodes: [a, b, _c]} do
    id = new_session(a)
    {:ok, _} = on(a, :register_variable, [id, :y, :integer, 1, [constraints: [max: 10]]])
    # b learns (and caches) the integer schema by writing.
    {:ok, %Variable{version: 2}} = on(b, :update_variable, [id, :y, 2, []])

    :ok = on(a, :delete_variable, [id, :y, []])
    {:ok, _} = on(a, :register_variable, [id, :y, :string, "s", []])

    assert {:error, {:invalid_value, {:expected, :string}}} =
             on(b, :update_variable, [id, :y, 3, []])

    assert {:ok, %Variable{type: :string, value: "t", version: 2}} =
             on(b, :update_variable, [id, :y, "t", []])

    assert {:ok, [%{version: 2, value: "t"}, %{version: 1, value: "s"}]} =
             on(a, :get_history, [id, :y, []])
  end

  test "a session outlives the node that made it", %{nodes: [_a, b, _c], server: server} do
    {:ok, [extra]} = LocalCluster.start_peers(["redis_extra"])
    child = {RedisBackend, url: TestRedis.url(server), password: "cluster-pw"}
    {:ok, _} = :erpc.call(extra, Supervisor, :start_child, [DSPex.Bridge.Supervisor, child])
    id = new_session(extra)
    {:ok, _} = on(extra, :register_variable, [id, "kept", :string, "yes", []])
    {:ok, _} = on(extra, :update_variable, [id, "kept", "still", []])

    :ok = LocalCluster.kill(extra)
    assert {:ok, %Variable{value: "still", version: 2}} = on(b, :get_variable, [id, "kept", []])
    assert {:ok, %Variable{version: 3}} = on(b, :update_variable, [id, "kept", "on b", []])
  end
end
