defmodule DSPex.Bridge.SessionStore.SessionHA do
  @moduledoc false
  # The HA side of a session's process: forwarding after a migration, writes held while a
  # migration or a promotion is under way, the replicated write path, promotion of a
  # replica, and the HA messages (resync, resume, demote). `Session` hands it every call
  # and message; what is not HA's goes back to `Session.guarded/3` (calls) or is answered
  # `:pass` (messages).

  alias DSPex.Bridge.{HAManager, Native, OptimizerCoordinator}
  alias DSPex.Bridge.HAManager.Replication
  alias DSPex.Bridge.SessionStore.{Session, Tables}

  # How long a migrated-away session's process lingers to forward calls already addressed
  # to it, once it has been idle.
  @forward_linger 5_000

  # Session.handle_call/3: HA's calls, and every call while the session is migrating, held or
  # under HA; the others go to Session.guarded/3.
  def call(msg, _from, %{forward_to: pid} = state) when is_pid(pid) do
    # Calls that reached this process after it handed the session over go to the new owner,
    # in the order they arrived; the caller hears back only once the new owner answered.
    {:reply, forward(msg, state), state, @forward_linger}
  end

  def call({:ha_attach, ha}, _from, state) do
    case attach(state, ha) do
      {:ok, ha} ->
        :ets.insert(Tables.keep(), {state.id, Map.take(ha, [:key, :epoch, :replicas])})
        # Writes held while a promotion finished go through the attached path now.
        state = %{state | ha: ha}

        case run_held(state) do
          {:cont, state} -> {:reply, :ok, state}
          {:stop, state} -> {:stop, :normal, :ok, state}
        end

      error ->
        {:reply, error, state}
    end
  end

  # A promoted session's writes wait for its HA registration.
  def call(msg, from, %{ha: :pending} = state) do
    if Replication.write?(msg),
      do: {:noreply, %{state | held: [{msg, from} | state.held]}},
      else: Session.guarded(msg, from, state)
  end

  def call({:ha_migrate, target, timeout}, _from, %{ha: ha} = state) when ha != nil do
    case Replication.migrate_out(state.id, ha, target, timeout, Session.export(state)) do
      {:ok, info, new_pid} ->
        # The copy here goes before the reply: a read here after the migration returned must
        # be routed to the new owner, not served the old rows. (Cleaning up after the reply
        # would also race a quick migration of the same session back to this node.)
        Session.destroy_rows(state.id)
        state = %{state | ha: nil, forward_to: new_pid, watchers: %{}, monitors: %{}}
        # Writes that came in after the hand-over began, before this call: to the new owner.
        for {msg, from} <- Enum.reverse(state.held), do: GenServer.reply(from, forward(msg, state))
        {:reply, {:ok, info}, %{state | held: []}, @forward_linger}

      error ->
        Native.ha_apply(HAManager.table(), ha.key, :abort_out)

        case run_held(state) do
          {:cont, state} -> {:reply, error, state}
          {:stop, state} -> {:stop, :normal, error, state}
        end
    end
  end

  def call({:ha_migrate, _target, _timeout}, _from, state),
    do: {:reply, {:error, :not_registered}, state}

  def call(msg, from, %{ha: ha} = state) when ha != nil do
    if Replication.write?(msg) do
      case Replication.accept_write(ha) do
        :ok ->
          msg
          |> Session.guarded(from, state)
          |> Replication.after_write(msg, fn -> Session.export(state) end)

        # A migration has begun and its call is on its way here: the write waits for it,
        # then goes to the new owner (or is applied here if the migration fails).
        {:error, :migrating} ->
          {:noreply, %{state | held: [{msg, from} | state.held]}}

        error ->
          {:reply, error, state}
      end
    else
      Session.guarded(msg, from, state)
    end
  end

  def call(msg, from, state), do: Session.guarded(msg, from, state)

  # A replica becoming the owner: the writes it holds are applied here, in order, before
  # any call is taken (calls wait in the mailbox), and writes that come meanwhile wait for
  # the HA registration (`ha: :pending`), so that none is acknowledged unreplicated.
  def promote(nil, state), do: {:cont, state}

  def promote({:replay, ops}, state) do
    Enum.reduce_while(ops, {:cont, state}, fn
      op, {:cont, st} when elem(op, 0) in [:lock_held, :lock_released] ->
        :ok = OptimizerCoordinator.apply_replicated(st.id, op)
        {:cont, {:cont, st}}

      op, {:cont, st} ->
        case Session.handle_call(op, {self(), make_ref()}, st) do
          {:reply, _reply, st} -> {:cont, {:cont, st}}
          {:reply, _reply, st, {:continue, c}} -> {:cont, {:cont, continue(st, c)}}
          {:noreply, st} -> {:cont, {:cont, st}}
          {:stop, _why, _reply, st} -> {:halt, {:stop, st}}
        end
    end)
    |> case do
      {:cont, st} -> {:cont, %{st | ha: :pending}}
      stop -> stop
    end
  end

  # Under HA every write goes through this process (and so to the replicas): direct edge
  # writes are turned away before the snapshot the replicas start from is taken.
  def attach(state, ha) do
    :ok = Native.graph_route_writes(state.meta.core, true)
    Replication.attach(state.id, ha, fn -> Session.export(state) end)
  end

  defp forward(msg, %{forward_to: pid}) do
    GenServer.call(pid, msg, 30_000)
  catch
    :exit, _ -> {:error, :session_not_found}
  end

  # The migration did not happen: the writes it held are applied here, in order. Returns
  # `{:stop, state}` when one of them deleted the session.
  defp run_held(state) do
    Enum.reduce(Enum.reverse(state.held), {:cont, %{state | held: []}}, fn
      {_msg, from}, {:stop, st} ->
        GenServer.reply(from, {:error, :session_not_found})
        {:stop, st}

      {msg, from}, {:cont, st} ->
        case Session.handle_call(msg, from, st) do
          {:reply, reply, st} -> {:cont, reply_to(st, from, reply)}
          {:reply, reply, st, {:continue, c}} -> {:cont, st |> reply_to(from, reply) |> continue(c)}
          {:noreply, st} -> {:cont, st}
          {:stop, _, reply, st} -> {:stop, reply_to(st, from, reply)}
        end
    end)
  end

  defp reply_to(state, from, reply) do
    GenServer.reply(from, reply)
    state
  end

  defp continue(state, c) do
    {:noreply, state} = Session.handle_continue(c, state)
    state
  end

  # A replica missed writes and asks for a fresh snapshot.
  def info({:ha_resync, replica}, %{ha: %{} = ha} = state) do
    :ok = Replication.resync(state.id, ha, replica, fn -> Session.export(state) end)
    {:noreply, state}
  end

  def info({:ha_resync, _replica}, state), do: {:noreply, state}

  # A promotion that could not register the session: it goes on as a plain local one.
  def info(:ha_standalone, %{ha: :pending} = state) do
    case run_held(%{state | ha: nil}) do
      {:cont, state} -> {:noreply, state}
      {:stop, state} -> {:stop, :normal, state}
    end
  end

  # A migration was called off before its call reached this process.
  def info(:ha_resume, state) do
    case run_held(state) do
      {:cont, state} -> {:noreply, state}
      {:stop, state} -> {:stop, :normal, state}
    end
  end

  # This node's copy was replaced by a newer owner (a healed partition, or a replica that
  # refused a write as stale): drop it; callers are routed to the owner from now on.
  def info(:ha_demote, %{forward_to: pid} = state) when is_pid(pid),
    do: {:noreply, state, @forward_linger}

  def info(:ha_demote, state) do
    Session.destroy_rows(state.id)
    {:stop, :normal, state}
  end

  # A forwarding process stops once callers have stopped reaching it.
  def info(msg, %{forward_to: pid} = state)
      when is_pid(pid) and msg in [:timeout, :idle_check],
      do: {:stop, :normal, state}

  def info(_msg, _state), do: :pass
end
