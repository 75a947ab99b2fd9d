defmodule DSPex.Bridge.RedisReadCacheTest do
  @moduledoc """
  The Redis backend's read cache, on two `:peer` nodes sharing one server: repeated reads
  are served on the node, and no read anywhere is stale once a write has returned, even
  when the caching node cannot drop its copies (stalled) or is dead.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{Redis, SessionStore, TestHelpers, TestRedis, Variable}
  alias DSPex.Bridge.HAManager.LocalCluster
  alias DSPex.Bridge.SessionStore.RedisBackend

  @moduletag timeout: 180_000
  @lease 400

  setup_all do
    :ok = LocalCluster.ensure_distributed(:dspex_redis_cache_test)
    server = TestRedis.start(password: "cache-pw")
    {:ok, nodes} = LocalCluster.start_peers(["cache_a", "cache_b"])
    Enum.each(nodes, &start_backend(&1, server))
    {:ok, conn} = Redis.connect(TestRedis.url(server), password: "cache-pw")

    on_exit(fn ->
      LocalCluster.stop_peers(nodes)
      TestRedis.stop(server)
    end)

    %{nodes: nodes, server: server, conn: conn}
  end

  defp start_backend(node, server) do
    child =
      {RedisBackend, url: TestRedis.url(server), password: "cache-pw", read_cache_lease_ms: @lease}

    {:ok, _} = :erpc.call(node, Supervisor, :start_child, [DSPex.Bridge.Supervisor, child])
  end

  defp on(node, fun, args), do: :erpc.call(node, SessionStore, fun, args, 60_000)

  defp new_variable(node, value \\ 0) do
    id = "cache_#{System.unique_integer([:positive])}"
    {:ok, ^id} = on(node, :create_session, [id, [backend: :redis]])
    {:ok, _} = on(node, :register_variable, [id, :x, :integer, value, []])
    id
  end

  defp commands(conn) do
    {:ok, info} = Redis.command(conn, ["INFO", "stats"])
    [_, n] = Regex.run(~r/total_commands_processed:(\d+)/, info)
    String.to_integer(n)
  end

  defp timed(fun) do
    t0 = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - t0}
  end

  test "repeated reads are served on the node, without a round trip", %{nodes: [a, _], conn: conn} do
    id = new_variable(a, 7)
    {:ok, %Variable{value: 7}} = on(a, :get_variable, [id, :x, []])

    # 2,000 reads in one call on the node: a few lease renewals at most reach the server.
    before = commands(conn)

    {reads, ms} =
      timed(fn ->
        :erpc.call(a, TestHelpers, :read_values, [id, :x, 2_000])
      end)

    served = commands(conn) - before
    assert Enum.all?(reads, &(&1 == {:ok, 7}))
    # INFO itself, and one renewal per lease that the loop spanned.
    assert served <= 2 + div(ms, div(@lease, 2)) + 1, "#{served} commands for 2,000 reads"
  end

  test "a read on any node right after a write returns sees that write", %{nodes: [a, b]} do
    id = new_variable(a)
    # Readers on node a keep its copy hot all along.
    hammer = :erpc.call(a, TestHelpers, :start_readers, [id, :x, 4])

    for i <- 1..300 do
      {:ok, %Variable{value: ^i}} = on(b, :update_variable, [id, :x, i, []])
      assert {:ok, %Variable{value: ^i}} = on(a, :get_variable, [id, :x, []])
    end

    reads = :erpc.call(a, TestHelpers, :stop_readers, [hammer])
    assert reads > 300
  end

  test "a node that cannot drop its copies holds a write back until its lease ends, no longer",
       %{nodes: [a, b]} do
    id = new_variable(a, 1)
    leased_at = System.monotonic_time(:millisecond)
    {:ok, %Variable{value: 1}} = on(a, :get_variable, [id, :x, []])
    backend = :erpc.call(a, Process, :whereis, [RedisBackend])
    :ok = :erpc.call(a, :sys, :suspend, [backend])

    try do
      {{:ok, %Variable{value: 2}}, ms} = timed(fn -> on(b, :update_variable, [id, :x, 2, []]) end)
      # Nothing acknowledged it: it returned only once a's lease (taken after `leased_at`)
      # ran out, and not long after. (One host: the nodes' clocks are the same clock.)
      since_lease = System.monotonic_time(:millisecond) - leased_at
      assert since_lease >= @lease - 10, "returned #{since_lease} ms after the lease began"
      assert ms < @lease + 1_500, "returned after #{ms} ms"
      # a never saw the change, yet its reader cannot get the old copy any more.
      assert {:ok, %Variable{value: 2}} = on(a, :get_variable, [id, :x, []])
    after
      :erpc.call(a, :sys, :resume, [backend])
    end
  end

  test "a dead caching node holds writes back until its lease ends; then they are fast", %{
    nodes: [a, _],
    server: server
  } do
    {:ok, [c]} = LocalCluster.start_peers(["cache_dead"])
    start_backend(c, server)
    id = new_variable(a, 1)
    {:ok, %Variable{value: 1}} = on(c, :get_variable, [id, :x, []])
    ref = Node.monitor(c, true)
    LocalCluster.kill(c)
    assert_receive {:nodedown, ^c}, 10_000
    _ = ref

    {{:ok, _}, first} = timed(fn -> on(a, :update_variable, [id, :x, 2, []]) end)
    assert first < @lease + 1_500, "first write after the death took #{first} ms"
    # The dead node's lease is gone from the server: the next write waits for nobody.
    {{:ok, _}, second} = timed(fn -> on(a, :update_variable, [id, :x, 3, []]) end)
    assert second < div(@lease, 2), "second write took #{second} ms"
  end

  test "a deleted variable or session is gone at once for every node's readers", %{
    nodes: [a, b]
  } do
    id = new_variable(a, 1)
    {:ok, _} = on(a, :register_variable, [id, :y, :integer, 5, []])
    {:ok, _} = on(b, :get_variable, [id, :x, []])
    {:ok, _} = on(b, :get_variable, [id, :y, []])

    :ok = on(a, :delete_variable, [id, :x, []])
    assert {:error, {:variable_not_found, :x}} = on(b, :get_variable, [id, :x, []])

    :ok = on(a, :delete_session, [id, []])
    assert {:error, :session_not_found} = on(b, :get_variable, [id, :y, []])
  end

  test "a bad lease is a clear error at start" do
    for bad <- [-1, 60_001, 1.5, "1000", nil] do
      assert {:error, {:invalid_option, {:read_cache_lease_ms, ^bad}}} =
               RedisBackend.start_link(url: "redis://127.0.0.1:1/0", read_cache_lease_ms: bad)
    end
  end
end
