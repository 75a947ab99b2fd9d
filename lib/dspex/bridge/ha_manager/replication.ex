defmodule DSPex.Bridge.HAManager.Replication do
  @moduledoc false
  # The session side of HA (run inside a session's process: attach, replicate each write,
  # migrate out), the receiving side (accept a migration), and the replica side (keep a
  # snapshot plus the writes since, promote it on failover).
  #
  # A replica keeps the owner's envelope and the write messages committed after it, in
  # order; promotion imports the envelope and replays the writes through a fresh session
  # process, so the promoted session went through exactly the owner's writes. The owner
  # sends a fresh snapshot after @refresh_every writes plus one per variable (so the cost of
  # a snapshot stays a small share of the writes it saves replaying), which bounds the log.

  alias DSPex.Bridge.{HAManager, Native, OptimizerCoordinator, SessionStore}
  alias DSPex.Bridge.HAManager.Directory

  # {id, owner, epoch, envelope, writes}, and the writes as {{id, seq}, message}.
  @table :dspex_ha_replicas
  @ops :dspex_ha_replica_ops
  @refresh_every 1_000
  @replica_timeout 5_000

  @writes [
    :register,
    :define_computed,
    :acl,
    :add_dependency,
    :add_dependencies,
    :remove_dependency,
    :clear_dependencies,
    :update,
    :rollback,
    :delete_variable,
    :watch,
    :unwatch,
    :lock_held,
    :lock_released
  ]

  # Owned by DSPex.Bridge.TableOwner processes, so replicas outlive a restart of the
  # HAManager process.
  def tables, do: [{@table, [:set]}, {@ops, [:ordered_set]}]

  # ---------------------------------------------------------------------------------------
  # in the owner's session process

  def write?(:delete), do: true
  def write?(msg) when is_tuple(msg), do: elem(msg, 0) in @writes
  def write?(_msg), do: false

  def attach(id, %{key: key, epoch: epoch, replicas: replicas} = request, export) do
    # `seq` numbers the writes sent to the replicas (the snapshot they start from is 0);
    # `ops` counts them since the last full snapshot.
    ha = %{key: key, epoch: epoch, replicas: replicas, ops: 0, seq: 0}

    case replicas -- Map.get(request, :skip, []) do
      [] ->
        {:ok, ha}

      to_push ->
        with {:ok, frame} <- export.(),
             {:ok, envelope} <- Native.ha_envelope_encode(key, epoch, frame, fences(id)) do
          for r <- to_push, do: push_snapshot(r, id, epoch, 0, envelope)
          {:ok, ha}
        end
    end
  end

  def accept_write(%{key: key}) do
    case Native.ha_apply(HAManager.table(), key, :accept_write) do
      {:ok, _epoch} -> :ok
      {:error, {:not_owner, owner, _}} -> {:error, {:not_owner, owner}}
      {:error, other} -> {:error, other}
    end
  end

  # After the session handled a write: a committed one goes to the replicas (and, in :sync
  # mode, is acknowledged only once they have it). A replica that knows a newer epoch
  # refuses it: this node was replaced, so the write is refused and the copy here dropped.
  def after_write(result, msg, export) do
    reply = elem(result, reply_index(result))
    state = state_of(result)

    if committed?(reply) do
      case replicate(state.id, state.ha, msg, export, state.count) do
        {:ok, ha} ->
          if msg == :delete, do: forget_everywhere(state.id)
          put_state(result, %{state | ha: ha})

        {:error, {:stale_epoch, _, _}} ->
          send(self(), :ha_demote)
          put_reply(result, {:error, {:not_owner, :replaced}})
      end
    else
      result
    end
  end

  @doc false
  # The session ended on its owner for good (it expired): its replicas drop their copies and
  # every directory forgets it.
  def retire(id, ha) do
    replicate(id, ha, :delete, fn -> {:error, :retired} end, 0)
    forget_everywhere(id)
  end

  defp forget_everywhere(id) do
    Directory.forget(id)
    GenServer.abcast(Node.list(), HAManager, {:forget, id})
    :ok
  end

  defp committed?(:ok), do: true
  defp committed?({:ok, _}), do: true
  defp committed?(_), do: false

  # {:reply, reply, state}, {:reply, reply, state, continue}, {:stop, reason, reply, state}
  defp reply_index({:reply, _, _}), do: 1
  defp reply_index({:reply, _, _, _}), do: 1
  defp reply_index({:stop, _, _, _}), do: 2

  defp put_reply(result, reply), do: put_elem(result, reply_index(result), reply)

  defp state_of({:reply, _r, s}), do: s
  defp state_of({:reply, _r, s, _c}), do: s
  defp state_of({:stop, _why, _r, s}), do: s

  defp put_state({:reply, r, _s}, s), do: {:reply, r, s}
  defp put_state({:reply, r, _s, c}, s), do: {:reply, r, s, c}
  defp put_state({:stop, why, r, _s}, s), do: {:stop, why, r, s}

  defp replicate(_id, %{replicas: []} = ha, _msg, _export, _count), do: {:ok, ha}

  defp replicate(id, ha, msg, export, count) do
    # Watches are few and must never be lost silently: they reach the replicas before they
    # are acknowledged, whatever the mode.
    mode = if watch?(msg), do: :sync, else: HAManager.config().replication
    seq = ha.seq + 1
    results = for r <- ha.replicas, do: {r, send_op(mode, r, id, ha.epoch, seq, msg)}

    case Enum.find(results, &match?({_, {:error, {:stale_epoch, _, _}}}, &1)) do
      {_, error} ->
        error

      nil ->
        # A replica that lost its copy (restarted), or missed a write (a gap in the
        # sequence), gets a fresh snapshot.
        lost = for {r, {:error, _}} <- results, do: r
        ops = ha.ops + 1
        refresh? = ops >= @refresh_every + count
        resync = if refresh?, do: ha.replicas, else: lost

        if resync != [] and msg != :delete do
          with {:ok, frame} <- export.(),
               {:ok, envelope} <- Native.ha_envelope_encode(ha.key, ha.epoch, frame, fences(id)) do
            for r <- resync, do: push_snapshot(r, id, ha.epoch, seq, envelope)
          end
        end

        {:ok, %{ha | ops: if(refresh?, do: 0, else: ops), seq: seq}}
    end
  end

  defp watch?(msg), do: is_tuple(msg) and elem(msg, 0) in [:watch, :unwatch]

  @doc false
  # A replica found a gap in the writes it received (an :async write lost on the way): it
  # gets a fresh snapshot, sent from the session's process so that it is in order with the
  # writes that follow.
  def resync(id, %{replicas: replicas} = ha, replica, export) do
    if replica in replicas do
      with {:ok, frame} <- export.(),
           {:ok, envelope} <- Native.ha_envelope_encode(ha.key, ha.epoch, frame, fences(id)) do
        push_snapshot(replica, id, ha.epoch, ha.seq, envelope)
      end
    end

    :ok
  end

  def resync(_id, _ha, _replica, _export), do: :ok

  defp send_op(:sync, r, id, epoch, seq, msg) do
    GenServer.call({HAManager, r}, {:replica_op, id, node(), epoch, seq, msg}, @replica_timeout)
  catch
    # An unreachable replica does not block the owner: the write is kept here and the
    # replica is resynced when it comes back (see the moduledoc on partitions).
    :exit, _ -> :unreachable
  end

  defp send_op(:async, r, id, epoch, seq, msg) do
    GenServer.cast({HAManager, r}, {:replica_op, id, node(), epoch, seq, msg})
    :ok
  end

  defp push_snapshot(r, id, epoch, seq, envelope) do
    GenServer.call(
      {HAManager, r},
      {:replica_snapshot, id, node(), epoch, seq, envelope},
      @replica_timeout
    )
  catch
    :exit, _ -> :unreachable
  end

  # Runs in the source session's process: its mailbox holds every call that arrives
  # meanwhile, and they are forwarded to the new owner once this returns.
  def migrate_out(id, ha, target, timeout, {:ok, frame}) do
    held = OptimizerCoordinator.held_in(id)

    with {:ok, envelope} <- Native.ha_envelope_encode(ha.key, ha.epoch, frame, fences(held)),
         {:ok, epoch, pid, replicas} <- transfer(target, envelope, timeout) do
      :ok = Native.ha_apply(HAManager.table(), ha.key, {:finish_out, epoch})
      # The new owner holds these locks now, with the same tokens; their holders are told.
      for {var, _, _, _, _} <- held, do: OptimizerCoordinator.hand_over(id, var)
      # The copy this node just sent is exactly the new owner's starting state, so when it
      # is to be a replica it keeps that copy instead of receiving it again.
      if node() in replicas, do: store_snapshot(id, target, epoch, 0, envelope)
      Directory.learn(id, target, epoch, replicas)
      {:ok, %{epoch: epoch, bytes: byte_size(envelope)}, pid}
    end
  end

  def migrate_out(_id, _ha, _target, _timeout, error), do: error

  # The locks held on a session's variables, as an envelope carries them (a migration's, and
  # a replica's snapshot, so that a promoted replica holds them too).
  # The holder's bytes carry its process too, so the new owner monitors it.
  defp fences(held) when is_list(held) do
    for {var, optimizer, token, lease_ms, pid} <- held,
        do: {:erlang.term_to_binary(var), :erlang.term_to_binary({optimizer, pid}), token, lease_ms}
  end

  defp fences(id), do: fences(OptimizerCoordinator.held_in(id))

  defp transfer(target, envelope, timeout) do
    case :erpc.call(target, __MODULE__, :accept_migration, [envelope, node()], timeout) do
      {:ok, _epoch, _pid, _replicas} = ok -> ok
      {:error, reason} -> {:error, {:transfer_failed, reason}}
    end
  catch
    :error, {:erpc, reason} -> {:error, {:transfer_failed, {:erpc, reason}}}
    :exit, reason -> {:error, {:transfer_failed, reason}}
  end

  # ---------------------------------------------------------------------------------------
  # on the receiving node

  @doc false
  def accept_migration(envelope, source) when is_binary(envelope) and is_atom(source) do
    table = HAManager.table()

    with {:ok, key, epoch, frame, locks} <- open(envelope),
         :ok <-
           in_transition(Native.ha_apply(table, key, {:begin_in, Atom.to_string(source), epoch})),
         {:ok, id} <- import_or_abort(table, key, frame),
         :ok <- adopt_locks(id, locks),
         {:ok, new_epoch} <- Native.ha_apply(table, key, :finish_in) do
      replicas = HAManager.choose_replicas(key, [node()])
      {:ok, pid} = HAManager.local_session(id)
      request = %{key: key, epoch: new_epoch, replicas: replicas, skip: [source]}
      :ok = GenServer.call(pid, {:ha_attach, request})
      Directory.announce(id, node(), new_epoch, replicas)
      {:ok, new_epoch, pid, replicas}
    end
  end

  def accept_migration(_envelope, _source), do: {:error, :bad_arguments}

  # The session's locks continue here with their holders' tokens (the sender is a cluster
  # node, as trusted as distribution itself, so its terms are decoded as they are).
  defp adopt_locks(id, locks) do
    Enum.each(locks, fn {var, holder, token, lease_ms} ->
      var = :erlang.binary_to_term(var)

      {optimizer, pid} =
        case :erlang.binary_to_term(holder) do
          {optimizer, pid} when is_pid(pid) or pid == nil -> {optimizer, pid}
          # A node of the release before holders carried their process.
          optimizer -> {optimizer, nil}
        end

      _ = OptimizerCoordinator.adopt(id, var, optimizer, token, lease_ms, pid)
    end)
  end

  defp open(envelope) do
    case Native.ha_envelope_decode(envelope) do
      {:ok, _key, _epoch, _frame, _locks} = ok -> ok
      {:error, reason} -> {:error, {:bad_snapshot, reason}}
    end
  end

  defp in_transition(:ok), do: :ok
  defp in_transition({:error, :migrating}), do: {:error, :already_migrating}
  defp in_transition({:error, other}), do: {:error, other}

  defp import_or_abort(table, key, frame) do
    case SessionStore.import_trusted(frame) do
      {:ok, id} = ok ->
        if HAManager.key(id) == key do
          ok
        else
          SessionStore.delete_session(id)
          Native.ha_apply(table, key, :abort_in)
          {:error, {:bad_snapshot, :session_id_mismatch}}
        end

      error ->
        Native.ha_apply(table, key, :abort_in)
        error
    end
  end

  # ---------------------------------------------------------------------------------------
  # on a replica node (called in the HAManager process)

  # `seq`: the number of the last write the snapshot holds; the next write is `seq + 1`.
  def store_snapshot(id, owner, epoch, seq, envelope) do
    key = HAManager.key(id)

    case Native.ha_apply(HAManager.table(), key, {:become_replica, Atom.to_string(owner), epoch}) do
      :ok ->
        drop_writes(id)
        Process.delete({:resync_asked, id})
        :ets.insert(@table, {id, owner, epoch, envelope, seq})
        :ok

      error ->
        error
    end
  end

  # Writes are kept in their sequence: one that does not follow the last is never applied
  # out of order. A duplicate is ignored; after a gap the owner is asked (once) for a fresh
  # snapshot, and nothing is kept until it comes. Called in the HAManager process.
  def store_op(id, owner, epoch, seq, op) do
    key = HAManager.key(id)

    with :ok <-
           Native.ha_apply(
             HAManager.table(),
             key,
             {:accept_replicated, Atom.to_string(owner), epoch}
           ),
         [{_, _, _, _, last}] <- :ets.lookup(@table, id) do
      cond do
        seq <= last ->
          :ok

        seq > last + 1 ->
          ask_resync(id, owner)
          {:error, {:gap, last, seq}}

        op == :delete ->
          :ets.delete(@table, id)
          drop_writes(id)
          Directory.forget(id)
          :ok

        true ->
          :ets.insert(@ops, {{id, seq}, op})
          :ets.update_element(@table, id, {5, seq})
          :ok
      end
    else
      [] -> {:error, :no_snapshot}
      error -> error
    end
  end

  defp ask_resync(id, owner) do
    unless Process.get({:resync_asked, id}) do
      Process.put({:resync_asked, id}, true)
      GenServer.cast({HAManager, owner}, {:resync, id, node()})
    end
  end

  defp drop_writes(id), do: :ets.select_delete(@ops, [{{{id, :_}, :_}, [], [true]}])

  # In order: the keys are {id, seq} in an ordered set.
  defp writes(id), do: :ets.select(@ops, [{{{id, :_}, :"$1"}, [], [:"$1"]}])

  @doc false
  # The writes a replica holds for `id` since its snapshot (for tests and benchmarks).
  def held(id) do
    case :ets.lookup(@table, id) do
      [{_, owner, epoch, _envelope, seq}] ->
        writes = :ets.select_count(@ops, [{{{id, :_}, :_}, [], [true]}])
        {:ok, %{owner: owner, epoch: epoch, writes: writes, seq: seq}}

      [] ->
        {:error, :not_a_replica}
    end
  end

  # `dead` went down: for each session it owned, the best-placed live replica promotes.
  def failover(dead, live) do
    for {id, ^dead, _epoch, _envelope, _n} <- :ets.tab2list(@table) do
      holders =
        case Directory.lookup(id) do
          {_, _, replicas} -> Enum.filter(replicas, &(&1 in live))
          nil -> []
        end

      holders = if node() in holders, do: holders, else: [node() | holders]
      weighted = for n <- holders, do: {n, 1.0}

      if HAManager.rank(weighted, HAManager.key(id)) |> List.first() == node() do
        promote(id, dead)
      end
    end

    :ok
  end

  defp promote(id, dead) do
    key = HAManager.key(id)
    [{^id, _owner, _epoch, envelope, _n}] = :ets.lookup(@table, id)
    ops = writes(id)
    started = System.monotonic_time(:millisecond)

    with {:ok, _key, _old, frame, locks} <- open(envelope),
         # The locks of the snapshot first; the replayed writes and lock changes follow.
         :ok <- adopt_locks(id, locks),
         {:ok, ^id} <- SessionStore.import_trusted(frame, replay: ops),
         {:ok, pid} <- HAManager.local_session(id),
         {:ok, epoch} <- promoted(pid, key) do
      :ets.delete(@table, id)
      drop_writes(id)
      replicas = HAManager.choose_replicas(key, [node(), dead])
      :ok = GenServer.call(pid, {:ha_attach, %{key: key, epoch: epoch, replicas: replicas}})
      Directory.announce(id, node(), epoch, replicas)

      HAManager.emit(
        :failover,
        %{duration_ms: System.monotonic_time(:millisecond) - started, writes_replayed: length(ops)},
        %{session_id: id, from: dead, epoch: epoch}
      )

      :ok
    else
      error ->
        HAManager.emit(:failover, %{duration_ms: 0, writes_replayed: 0}, %{
          session_id: id,
          from: dead,
          error: error
        })

        error
    end
  end

  # The session replayed the owner's committed writes before taking calls; it holds new
  # writes until it is attached, or goes on unregistered if the promotion is refused.
  defp promoted(pid, key) do
    case Native.ha_apply(HAManager.table(), key, :promote) do
      {:ok, epoch} ->
        {:ok, epoch}

      error ->
        send(pid, :ha_standalone)
        error
    end
  end
end
