defmodule DSPex.Bridge.HAManagerTest do
  # Real nodes (:peer on 127.0.0.1): not async, and this node becomes distributed.
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{HAManager, SessionStore}
  alias DSPex.Bridge.HAManager.{LocalCluster, Replication}
  import DSPex.Bridge.TestHelpers, only: [eventually: 2]

  @moduletag timeout: 180_000

  setup_all do
    :ok = LocalCluster.ensure_distributed(:dspex_ha_test)
    :ok
  end

  defp peers(names, opts \\ []) do
    {:ok, nodes} = LocalCluster.start_peers(names, opts)
    on_exit(fn -> LocalCluster.stop_peers(nodes) end)
    nodes
  end

  defp rpc(node, fun, args), do: :erpc.call(node, SessionStore, fun, args, 30_000)
  defp ha(node, fun, args), do: :erpc.call(node, HAManager, fun, args, 60_000)

  defp new_session(node, opts \\ []) do
    id = "ha_#{System.unique_integer([:positive])}"
    {:ok, ^id} = rpc(node, :create_session, [id, [history_limit: 10_000] ++ opts])
    {:ok, _} = rpc(node, :register_variable, [id, "counter", :integer, 0])
    {:ok, _} = ha(node, :register_session, [id])
    id
  end

  # A client writing 1, 2, 3, ... through `node` until told to stop; it reports every value
  # whose write was acknowledged, and any error.
  defp start_writer(node, id) do
    parent = self()

    spawn_link(fn ->
      Stream.iterate(1, &(&1 + 1))
      |> Enum.reduce_while([], fn i, acked ->
        receive do
          :stop -> {:halt, acked}
        after
          0 ->
            case rpc(node, :update_variable, [id, "counter", i]) do
              {:ok, _} -> {:cont, [i | acked]}
              error -> {:halt, [{:error, i, error} | acked]}
            end
        end
      end)
      |> then(&send(parent, {:acked, Enum.reverse(&1)}))
    end)
  end

  defp stop_writer(pid) do
    send(pid, :stop)
    assert_receive {:acked, acked}, 30_000

    assert Enum.all?(acked, &is_integer/1),
           "a client saw an error: #{inspect(Enum.reject(acked, &is_integer/1))}"

    acked
  end

  defp history_values(node, id) do
    {:ok, history} = rpc(node, :get_history, [id, "counter", []])
    history |> Enum.reverse() |> Enum.map(& &1.value)
  end

  test "routing: calls on a non-owner node reach the owner" do
    [a, b] = peers(["route_a", "route_b"])
    id = new_session(a)
    assert {:ok, ^a} = ha(b, :get_session_owner, [id])
    assert {:ok, %{value: 0}} = rpc(b, :get_variable, [id, "counter"])
    assert {:ok, %{value: 5}} = rpc(b, :update_variable, [id, "counter", 5])
    assert {:ok, %{value: 5}} = rpc(a, :get_variable, [id, "counter"])
    # From this node too, which holds nothing.
    assert {:ok, %{value: 5}} = SessionStore.get_variable(id, "counter")
    assert {:error, :session_not_found} = rpc(b, :get_variable, ["nowhere", "counter"])

    # Deleted on its owner: the replica drops its copy and every directory forgets it.
    assert {:ok, _} = :erpc.call(b, Replication, :held, [id])
    assert :ok = rpc(b, :delete_session, [id])
    assert {:error, :not_a_replica} = :erpc.call(b, Replication, :held, [id])
    eventually(fn -> HAManager.get_session_owner(id) == {:error, :not_registered} end, 5_000)
    assert {:error, :not_registered} = ha(a, :get_session_owner, [id])
    assert {:error, :session_not_found} = rpc(b, :get_variable, [id, "counter"])
  end

  test "a closure compute moves with its session inside the cluster (never in an export)" do
    [a, b] = peers(["closure_a", "closure_b"])
    id = new_session(a)

    {:ok, _} =
      :erpc.call(a, DSPex.Bridge.TestComputes.Remote, :register_closure, [id, "plus_one", "counter"])

    assert {:error, {:not_exportable, {:closure_compute, "plus_one"}}} =
             rpc(a, :export_session, [id])

    assert {:ok, _} = ha(a, :migrate_session, [id, b, []])
    assert {:ok, ^b} = ha(a, :get_session_owner, [id])
    assert {:ok, _} = rpc(b, :update_variable, [id, "counter", 41])
    assert {:ok, 42} = rpc(b, :get_value, [id, "plus_one"])
  end

  test "a crash of the HA process loses no ownership: the owner keeps writing, the replica keeps its copy" do
    [a, b] = peers(["crash_a", "crash_b"])
    id = new_session(a)
    {:ok, _} = rpc(a, :update_variable, [id, "counter", 1])

    for node <- [a, b] do
      old = :erpc.call(node, Process, :whereis, [HAManager])
      true = :erpc.call(node, Process, :exit, [old, :kill])

      eventually(
        fn -> :erpc.call(node, Process, :whereis, [HAManager]) not in [nil, old] end,
        5_000
      )
    end

    assert {:ok, %{value: 2}} = rpc(a, :update_variable, [id, "counter", 2])
    assert {:ok, ^a} = ha(b, :get_session_owner, [id])
    assert {:ok, %{writes: 2}} = :erpc.call(b, Replication, :held, [id])
    eventually(fn -> Map.has_key?(ha(a, :members, []), b) end, 5_000)
    assert {:ok, _} = ha(a, :migrate_session, [id, b])
    assert {:ok, %{value: 2}} = rpc(b, :get_variable, [id, "counter"])
  end

  test "a session that expires on its owner is forgotten by its replica and every node" do
    [a, b] = peers(["ttl_a", "ttl_b"])
    # A TTL long enough that the replica is seen holding its copy on a loaded machine.
    id = new_session(a, ttl: 2_000)
    assert {:ok, _} = :erpc.call(b, Replication, :held, [id])

    eventually(
      fn -> :erpc.call(b, Replication, :held, [id]) == {:error, :not_a_replica} end,
      15_000
    )

    eventually(fn -> ha(b, :get_session_owner, [id]) == {:error, :not_registered} end, 5_000)
    assert {:error, :session_not_found} = rpc(b, :get_variable, [id, "counter"])
  end

  test "a 10,000-variable session migrates while a client writes: every acknowledged write is on the new owner, in order" do
    [a, b] = peers(["mig_a", "mig_b"])
    id = new_session(a)
    updates = for i <- 1..9_999, do: {"v#{i}", i}
    for {name, v} <- updates, do: {:ok, _} = rpc(a, :register_variable, [id, name, :integer, v])

    writer = start_writer(a, id)

    eventually(
      fn -> match?({:ok, %{value: v}} when v > 20, rpc(a, :get_variable, [id, "counter"])) end,
      10_000
    )

    assert {:ok, %{epoch: {2, _}, bytes: bytes, duration_ms: ms}} = ha(a, :migrate_session, [id, b])
    assert bytes > 100_000
    # Keep writing through the old owner for a while: routed to the new one.
    eventually(
      fn -> match?({:ok, %{value: v}} when v > 200, rpc(b, :get_variable, [id, "counter"])) end,
      10_000
    )

    acked = stop_writer(writer)

    assert {:ok, ^b} = ha(a, :get_session_owner, [id])
    assert {:ok, ^b} = ha(b, :get_session_owner, [id])
    # The source cleaned up: it holds no copy of the session any more.
    assert [] == :erpc.call(a, :ets, :lookup, [:dspex_bridge_sessions, id])
    assert {:ok, %{value: 9_999}} = rpc(b, :get_variable, [id, "v9999"])
    values = history_values(b, id)
    assert Enum.drop(values, 1) == acked
    IO.puts("\n    migration of 10,000 variables: #{ms} ms, #{bytes} bytes")
  end

  test "a held lock moves with its session: same token on the new owner, holder told" do
    [a, b] = peers(["lock_a", "lock_b"])
    id = new_session(a)
    oc = DSPex.Bridge.OptimizerCoordinator
    # The optimizer is a process on A; its mailbox is read back below.
    holder = Node.spawn(a, Process, :sleep, [:infinity])

    {:ok, lock} =
      :erpc.call(a, oc, :acquire_lock, ["counter", :opt, holder, [session_id: id, lease_ms: 60_000]])

    {:ok, _} = rpc(a, :update_variable, [id, "counter", 1, [lock_token: lock.token]])
    assert {:ok, _} = ha(a, :migrate_session, [id, b])

    assert :ok = :erpc.call(b, oc, :check_write_allowed, ["counter", lock.token, [session_id: id]])

    assert {:ok, %{holder: %{optimizer_id: :opt, token: token}}} =
             :erpc.call(b, oc, :get_lock_info, ["counter", [session_id: id]])

    assert token == lock.token
    # Writes reach B through A: with the token they pass, without it they are refused.
    assert {:ok, %{value: 2}} =
             rpc(a, :update_variable, [id, "counter", 2, [lock_token: lock.token]])

    assert {:error, {:locked_by, :opt}} = rpc(a, :update_variable, [id, "counter", 3])
    # Asked on A, the lock's state is B's now: the session's locks live with its owner.
    assert {:ok, %{holder: %{optimizer_id: :opt, token: ^token}}} =
             :erpc.call(a, oc, :get_lock_info, ["counter", [session_id: id]])

    assert {:messages, [{:lock_lost, "counter", :moved, _held_ms}]} =
             :erpc.call(a, :erlang, :process_info, [holder, :messages])

    # Tokens B grants later are above the adopted one.
    :ok = :erpc.call(b, oc, :force_release, ["counter", :test, [session_id: id]])
    other = Node.spawn(b, Process, :sleep, [:infinity])
    {:ok, next} = :erpc.call(b, oc, :acquire_lock, ["counter", :opt2, other, [session_id: id]])
    assert next.token > lock.token
  end

  test "failover with :sync replication: the replica promotes and every acknowledged write is there" do
    [a, b] = peers(["sync_a", "sync_b"], replication: :sync)
    id = new_session(a)
    {:ok, _} = rpc(a, :register_variable, [id, :label, :string, "before"])
    assert {:ok, %{owner: ^a}} = :erpc.call(b, Replication, :held, [id])

    # Written on A itself as fast as A acknowledges them (each after B stored it), then A
    # dies at once.
    assert {:ok, 2_000} = LocalCluster.write_sequence(a, id, "counter", 1..2_000)
    acked = Enum.to_list(1..2_000)
    LocalCluster.kill(a)

    eventually(fn -> ha(b, :get_session_owner, [id]) == {:ok, b} end, 15_000)
    assert {:ok, %{value: 2_000}} = rpc(b, :get_variable, [id, "counter"])
    assert {:ok, %{value: "before"}} = rpc(b, :get_variable, [id, :label])
    assert Enum.drop(history_values(b, id), 1) == acked
    # The promoted owner writes.
    assert {:ok, %{value: 2_001}} = rpc(b, :update_variable, [id, "counter", 2_001])
  end

  test "failover with :async replication loses at most the writes in flight, never a middle one" do
    [a, b] = peers(["async_a", "async_b"], replication: :async)
    id = new_session(a)
    # Fewer than the session's history_limit, so the history shows every surviving write.
    n = 8_000
    # Written on A itself, as fast as A acknowledges them, then A dies at once.
    assert {:ok, ^n} = LocalCluster.write_sequence(a, id, "counter", 1..n)
    LocalCluster.kill(a)

    eventually(fn -> ha(b, :get_session_owner, [id]) == {:ok, b} end, 15_000)
    present = Enum.drop(history_values(b, id), 1)
    # What survived is exactly the first writes, in order: a prefix of what was acknowledged.
    assert present == Enum.to_list(1..length(present)//1)
    lost = n - length(present)
    IO.puts("\n    async failover: #{lost} of #{n} acknowledged writes lost")
  end

  test "draining a node with 100 sessions moves them all while clients keep working" do
    [a, b] = peers(["drain_a", "drain_b"])
    ids = for _ <- 1..100, do: new_session(a)
    writers = for id <- Enum.take(ids, 3), do: {id, start_writer(a, id)}

    :ok = ha(a, :start_draining, [a])
    assert :ok = ha(a, :await_drainage, [[timeout: 60_000]])
    for id <- ids, do: assert({:ok, ^b} = ha(b, :get_session_owner, [id]))

    for {id, w} <- writers do
      acked = stop_writer(w)
      assert Enum.drop(history_values(b, id), 1) == acked
    end

    # A draining node is no migration target; after stop_draining it is again.
    new_id = new_session(b)
    assert {:error, {:node_unavailable, ^a}} = ha(b, :migrate_session, [new_id, a])
    :ok = ha(a, :stop_draining, [a])
    eventually(fn -> a in ha(b, :eligible_nodes, []) end, 5_000)
    assert {:ok, _} = ha(b, :migrate_session, [new_id, a])
  end

  test "a partitioned former owner that rejoins with an old epoch is refused and steps down" do
    [a, b] = peers(["part_a", "part_b"])
    id = new_session(a)
    {:ok, _} = rpc(a, :update_variable, [id, "counter", 1])
    {:ok, {_, old_epoch, _}} = {:ok, :erpc.call(a, HAManager.Directory, :lookup, [id])}

    true = LocalCluster.disconnect(a, b)
    # B sees A go down and takes over at a newer epoch.
    eventually(fn -> ha(b, :get_session_owner, [id]) == {:ok, b} end, 15_000)
    {:ok, _} = rpc(b, :update_variable, [id, "counter", 100])
    # A, cut off, still thinks it owns the session and writes (no quorum; see the docs).
    {:ok, _} = rpc(a, :update_variable, [id, "counter", 2])

    true = LocalCluster.connect(a, b)
    eventually(fn -> ha(a, :get_session_owner, [id]) == {:ok, b} end, 10_000)
    # A's copy is gone; its callers reach B, and A's partition-time write is not there.
    eventually(fn -> :erpc.call(a, :ets, :lookup, [:dspex_bridge_sessions, id]) == [] end, 5_000)
    assert {:ok, %{value: 100}} = rpc(a, :get_variable, [id, "counter"])
    refute 2 in history_values(b, id)
    # A change stamped with A's old epoch is refused by B.
    op = {:update, [{"counter", 7}], %{expected_versions: %{}}}

    assert {:error, {:stale_epoch, ^old_epoch, _}} =
             :erpc.call(b, GenServer, :call, [HAManager, {:replica_op, id, a, old_epoch, 1, op}])
  end

  test "events: migration with duration and bytes, node_down; the cluster dashboard merges every node" do
    [a, b] = peers(["events_a", "events_b"])
    :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :ha])
    on_exit(fn -> DSPex.Bridge.Events.unsubscribe([:dspex, :bridge, :ha]) end)

    # A session owned by this node, moved to a peer: the events are emitted here.
    id = "ha_local_#{System.unique_integer([:positive])}"
    {:ok, ^id} = SessionStore.create_session(id)
    {:ok, _} = SessionStore.register_variable(id, "counter", :integer, 0)
    {:ok, _} = HAManager.register_session(id)

    assert_receive {:dspex_event, [:dspex, :bridge, :ha, :session_registered], _,
                    %{session_id: ^id}}

    {:ok, _} = HAManager.migrate_session(id, a)
    assert_receive {:dspex_event, [:dspex, :bridge, :ha, :migration_started], _, %{target: ^a}}

    assert_receive {:dspex_event, [:dspex, :bridge, :ha, :migration_completed],
                    %{duration_ms: ms, bytes: bytes}, %{session_id: ^id}}

    assert is_integer(ms) and bytes > 0
    assert {:ok, %{value: 1}} = SessionStore.update_variable(id, "counter", 1)

    # Writes on both peers; the cluster view adds up every node's own view.
    other = new_session(b)
    for i <- 1..7, do: {:ok, _} = rpc(b, :update_variable, [other, "counter", i])
    {:ok, dash_a} = :erpc.call(a, DSPex.Bridge.Analytics, :get_dashboard, [])
    {:ok, dash_b} = :erpc.call(b, DSPex.Bridge.Analytics, :get_dashboard, [])
    {:ok, dash_here} = DSPex.Bridge.Analytics.get_dashboard()
    {:ok, cluster} = :erpc.call(a, DSPex.Bridge.Analytics, :get_dashboard, [:cluster])
    assert dash_b.variable_writes >= 8

    assert cluster.variable_writes ==
             dash_a.variable_writes + dash_b.variable_writes + dash_here.variable_writes

    LocalCluster.kill(b)
    assert_receive {:dspex_event, [:dspex, :bridge, :ha, :node_down], _, %{node: ^b}}, 10_000
  end

  describe "bad input: the session stays where it was and keeps working" do
    test "unknown and self targets; unregistered sessions; bad options" do
      [a, _b] = peers(["bad_a", "bad_b"])
      id = new_session(a)

      assert {:error, {:node_unavailable, :"nobody@127.0.0.1"}} =
               ha(a, :migrate_session, [id, :"nobody@127.0.0.1"])

      assert {:error, {:node_unavailable, ^a}} = ha(a, :migrate_session, [id, a])
      assert {:error, {:invalid_option, _}} = ha(a, :migrate_session, [id, "b"])
      assert {:error, :not_registered} = ha(a, :migrate_session, ["nope", a])
      assert {:error, :not_registered} = ha(a, :get_session_owner, ["nope"])
      assert {:error, :session_not_found} = ha(a, :register_session, ["nope"])
      assert {:error, :already_registered} = ha(a, :register_session, [id])
      assert {:error, {:invalid_option, {:bogus, 1}}} = ha(a, :register_session, [id, [bogus: 1]])
      assert {:error, {:invalid_option, {:replicas, 9}}} = ha(a, :configure, [[replicas: 9]])
      assert {:error, {:invalid_option, :bad}} = ha(a, :configure, [:bad])

      assert {:error, {:invalid_option, {:placement, :nowhere}}} =
               ha(a, :register_session, [id, [placement: :nowhere]])

      assert {:error, {:invalid_node, "a"}} = ha(a, :start_draining, ["a"])
      assert {:error, {:invalid_node, 1}} = ha(a, :stop_draining, [1])
      assert {:error, {:invalid_option, {:timeout, -1}}} = ha(a, :await_drainage, [[timeout: -1]])
      assert {:error, {:invalid_option, :x}} = ha(a, :await_drainage, [:x])
      assert {:error, {:invalid_session_id, 42}} = ha(a, :register_session, [42])
      assert {:ok, %{value: 1}} = rpc(a, :update_variable, [id, "counter", 1])
      assert {:ok, ^a} = ha(a, :get_session_owner, [id])
    end

    test "a target that went down" do
      [a, b] = peers(["down_a", "down_b"])
      id = new_session(a)
      LocalCluster.kill(b)
      eventually(fn -> b not in ha(a, :eligible_nodes, []) end, 10_000)
      assert {:error, {:node_unavailable, ^b}} = ha(a, :migrate_session, [id, b])
      assert {:ok, %{value: 4}} = rpc(a, :update_variable, [id, "counter", 4])
      assert {:ok, ^a} = ha(a, :get_session_owner, [id])
    end

    test "corrupt, truncated and newer-format snapshots are refused before anything changes" do
      [a, b] = peers(["snap_a", "snap_b"])
      id = new_session(a)
      {:ok, frame} = rpc(a, :export_session, [id])
      epoch = {1, Atom.to_string(a)}

      {:ok, envelope} =
        :erpc.call(a, DSPex.Bridge.Native, :ha_envelope_encode, ["s:" <> id, epoch, frame, []])

      size = byte_size(envelope)
      <<head::binary-size(size - 1), last>> = envelope
      corrupt = head <> <<Bitwise.bxor(last, 1)>>
      truncated = binary_part(envelope, 0, size - 10)
      <<magic::binary-size(4), _version::little-16, rest::binary>> = envelope
      newer = magic <> <<2::little-16>> <> rest

      assert {:error, {:bad_snapshot, :checksum_mismatch}} =
               :erpc.call(b, Replication, :accept_migration, [corrupt, a])

      assert {:error, {:bad_snapshot, {:truncated, _}}} =
               :erpc.call(b, Replication, :accept_migration, [truncated, a])

      assert {:error, {:bad_snapshot, {:unsupported_version, 2}}} =
               :erpc.call(b, Replication, :accept_migration, [newer, a])

      assert {:error, {:bad_snapshot, :bad_magic}} =
               :erpc.call(b, Replication, :accept_migration, ["garbage", a])

      assert [] == :erpc.call(b, :ets, :lookup, [:dspex_bridge_sessions, id])
      assert {:ok, ^a} = ha(a, :get_session_owner, [id])
      assert {:ok, %{value: 3}} = rpc(a, :update_variable, [id, "counter", 3])
      assert {:ok, _} = ha(a, :migrate_session, [id, b])
    end

    test "a write that arrives as a migration begins waits, and is applied here if it is called off" do
      [a, b] = peers(["held_a", "held_b"])
      id = new_session(a)
      native = DSPex.Bridge.Native
      table = :erpc.call(a, HAManager, :table, [])
      key = "s:" <> id
      :ok = :erpc.call(a, native, :ha_apply, [table, key, {:begin_out, Atom.to_string(b)}])
      write = Task.async(fn -> rpc(a, :update_variable, [id, "counter", 5]) end)
      assert Task.yield(write, 200) == nil, "the write did not wait for the migration"
      :ok = :erpc.call(a, native, :ha_apply, [table, key, :abort_out])
      {:ok, pid} = :erpc.call(a, HAManager, :local_session, [id])
      send(pid, :ha_resume)
      assert {:ok, %{value: 5}} = Task.await(write, 5_000)
      assert {:ok, ^a} = ha(a, :get_session_owner, [id])
    end

    test "migrating a session that is already migrating" do
      [a, b] = peers(["twice_a", "twice_b"])
      id = new_session(a)
      for i <- 1..5_000, do: {:ok, _} = rpc(a, :register_variable, [id, "v#{i}", :integer, i])
      key = "s:" <> id
      table = :erpc.call(a, HAManager, :table, [])
      first = Task.async(fn -> ha(a, :migrate_session, [id, b]) end)

      eventually(
        fn ->
          match?(
            {{:migrating_out, _}, _, _},
            :erpc.call(a, DSPex.Bridge.Native, :ha_info, [table, key])
          )
        end,
        10_000
      )

      assert {:error, :already_migrating} = ha(a, :migrate_session, [id, b])
      assert {:ok, _} = Task.await(first, 30_000)
      assert {:ok, ^b} = ha(b, :get_session_owner, [id])
    end
  end
end
