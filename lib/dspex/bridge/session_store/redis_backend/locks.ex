defmodule DSPex.Bridge.SessionStore.RedisBackend.Locks do
  @moduledoc false
  # Fenced optimizer locks of Redis sessions, this node's side (LockScripts has the
  # server's). The backend process runs the waits: a waiter's call is answered when its
  # grant is published to this node, or at its timeout; it monitors holders and waiters, so
  # a dead one's lock goes to the next waiter at once. A holder on a node that died loses
  # the lock when its lease runs out: the waiters' nodes poke the server at that time.
  #
  # The acquire script runs in the caller (one process hop less): before it, the caller
  # tells the backend process to expect a grant or a preemption notice for its member, so
  # that neither is lost if it is published before the caller says what came of the
  # script; a queued caller then waits in a call to the process.
  #
  # Functions here take and return the backend process's lock state (`t`); those that run
  # in a caller's process (acquire, release, renew, info) say so.

  alias DSPex.Bridge.OptimizerCoordinator
  alias DSPex.Bridge.SessionStore.RedisBackend
  alias DSPex.Bridge.SessionStore.RedisBackend.LockScripts

  defstruct [:node_id, waiters: %{}, held: %{}, expected: %{}]

  @type t :: %__MODULE__{
          node_id: binary(),
          # member => %{from, session, var, optimizer, who, pid, monitor, timer, poke}
          waiters: %{binary() => map()},
          # member => %{session, var, optimizer, who, pid, monitor}
          held: %{binary() => map()},
          # member => %{entry, grant: token | nil, preempt: notice | nil, until: ms}
          expected: %{binary() => map()}
        }

  # Arrival within one priority, in ms since the epoch: below 2^42 until the year 2109, so
  # priorities of -1000..1000 order exactly in a double score.
  @priority_step 4_398_046_511_104

  # An expectation whose caller never said what came of it (it died) is dropped this long
  # after its timeout.
  @expect_slack_ms 30_000

  def new(node_id), do: %__MODULE__{node_id: node_id}

  @doc false
  # This node's channel: lock grants and preemptions, and acknowledgements of its changes
  # by the nodes that cache them.
  def grants_channel(backend, node_id), do: backend.prefix <> "grants:" <> node_id

  # In the caller.
  def acquire(backend, {session, var, optimizer, pid, o}) do
    if node(pid) == node() and not Process.alive?(pid) do
      {:error, {:holder_down, pid}}
    else
      member = backend.node_id <> "|" <> Integer.to_string(:erlang.unique_integer([:positive]))
      now = System.system_time(:millisecond)
      deadline = System.monotonic_time(:millisecond) + o.timeout
      who = :erlang.term_to_binary(optimizer)
      entry = %{session: session, var: var, optimizer: optimizer, who: who, pid: pid}
      GenServer.cast(RedisBackend, {:lock_expect, member, entry, o.timeout})

      args = [
        RedisBackend.encode_id(var),
        member,
        who,
        o.lease_ms,
        now + o.timeout,
        -o.priority * @priority_step + now,
        Atom.to_string(o.conflict_resolution),
        o.priority,
        o.grace_ms
      ]

      case run(backend, LockScripts.acquire(), session, var, args) do
        {:ok, ["granted", token]} ->
          GenServer.cast(RedisBackend, {:lock_granted, member})
          {:ok, lock(entry, token)}

        {:ok, ["queued", pttl]} ->
          await_grant({:lock_wait, member, entry, pttl, deadline}, o.timeout)

        other ->
          GenServer.cast(RedisBackend, {:lock_unexpect, member})
          refused(other, var)
      end
    end
  end

  # The process answers by the deadline (its timer); a process that is gone is an answer.
  defp await_grant(request, timeout) do
    GenServer.call(RedisBackend, request, timeout + 15_000)
  catch
    :exit, _ -> {:error, :backend_unavailable}
  end

  defp refused({:ok, ["held", holder]}, _var), do: {:error, {:lock_held_by, decode(holder)}}
  defp refused({:ok, "missing"}, var), do: {:error, {:variable_not_found, var}}
  defp refused({:error, _} = error, _var), do: error

  # In the backend process: a caller is about to run the acquire script for `member`.
  def expect(%__MODULE__{} = locks, backend, member, entry, timeout) do
    now = System.monotonic_time(:millisecond)

    {stale, expected} = Enum.split_with(locks.expected, fn {_member, e} -> e.until < now end)

    # Its caller is gone: a grant it got goes back.
    for {m, %{grant: token, entry: e}} <- stale,
        token != nil,
        do: drop(backend, m, e.session, e.var)

    e = %{entry: entry, grant: nil, preempt: nil, until: now + timeout + @expect_slack_ms}
    %{locks | expected: Map.put(Map.new(expected), member, e)}
  end

  def unexpect(%__MODULE__{} = locks, member),
    do: %{locks | expected: Map.delete(locks.expected, member)}

  # The caller's script granted the lock at once.
  def granted_here(%__MODULE__{} = locks, member) do
    case Map.pop(locks.expected, member) do
      {nil, _} -> locks
      {e, expected} -> held_now(%{locks | expected: expected}, member, e)
    end
  end

  # The caller's script queued it: it waits here, unless its grant came already.
  def wait(%__MODULE__{} = locks, member, entry, from, pttl, deadline) do
    case Map.pop(locks.expected, member) do
      {%{grant: token} = e, expected} when token != nil ->
        {:reply, {:ok, lock(entry, token)}, held_now(%{locks | expected: expected}, member, e)}

      {_e, expected} ->
        waiter =
          Map.merge(entry, %{
            from: from,
            monitor: Process.monitor(entry.pid),
            timer: Process.send_after(self(), {:lock_timeout, member}, timer_ms(deadline)),
            poke: poke_after(member, pttl)
          })

        {:noreply, %{locks | expected: expected, waiters: Map.put(locks.waiters, member, waiter)}}
    end
  end

  defp timer_ms(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  # A holder now: monitored, and told of a preemption that came before.
  defp held_now(locks, member, e) do
    locks = hold(locks, member, e.entry)
    if e.preempt, do: preempting(locks, e.preempt), else: locks
  end

  # A message published for this node: a grant (`g|`) or a preemption (`p|`).
  def published(%__MODULE__{} = locks, "g|" <> grant), do: granted(locks, grant)
  def published(%__MODULE__{} = locks, "p|" <> notice), do: preempting(locks, notice)
  def published(%__MODULE__{} = locks, _other), do: locks

  # A higher-priority waiter asked for a lock held here: the holder is told, and loses it
  # after the grace period unless it releases first. A notice for a holder whose caller
  # has not said yet that it holds the lock is kept until it does.
  defp preempting(locks, notice) do
    with [grace, node, n, by] <- String.split(notice, "|", parts: 4),
         {grace, ""} <- Integer.parse(grace) do
      member = node <> "|" <> n

      case locks do
        %{expected: %{^member => _}} ->
          %{locks | expected: Map.update!(locks.expected, member, &%{&1 | preempt: notice})}

        %{held: %{^member => holder}} ->
          info = {:session_id, holder.session, :by, decode(by), :grace_ms, grace}
          send(holder.pid, {:optimization_preempted, holder.var, info})
          Process.send_after(self(), {:lock_preempt_due, member}, grace)
          locks

        _ ->
          locks
      end
    else
      _ -> locks
    end
  end

  # The grace period is over: the lock goes to the first waiter.
  def preempt_due(%__MODULE__{} = locks, backend, member) do
    case Map.pop(locks.held, member) do
      {nil, _} ->
        locks

      {holder, held} ->
        Process.demonitor(holder.monitor, [:flush])
        drop(backend, member, holder.session, holder.var)
        held_ms = System.system_time(:millisecond) - holder.at
        send(holder.pid, {:lock_lost, holder.var, :preempted, held_ms})
        %{locks | held: held}
    end
  end

  # A grant published for this node: `<node id>|<n>|<token>` (the member, then the token).
  defp granted(%__MODULE__{} = locks, payload) do
    with [node, n, token] <- String.split(payload, "|"),
         {token, ""} <- Integer.parse(token) do
      member = node <> "|" <> n

      case Map.pop(locks.waiters, member) do
        # Its caller has not said yet that its script queued it: kept for its wait.
        {nil, _} when is_map_key(locks.expected, member) ->
          expected = Map.update!(locks.expected, member, &%{&1 | grant: token})
          %{locks | expected: expected}

        # Nobody here waits for it any more: its timeout (or death) already gave it back.
        {nil, _} ->
          locks

        {waiter, waiters} ->
          stop_timers(waiter)
          GenServer.reply(waiter.from, {:ok, lock(waiter, token)})
          locks = %{locks | waiters: waiters}
          holder = waiter |> Map.take(held_keys()) |> Map.put(:at, System.system_time(:millisecond))
          %{locks | held: Map.put(locks.held, member, holder)}
      end
    else
      _ -> locks
    end
  end

  def timed_out(%__MODULE__{} = locks, backend, member) do
    case Map.pop(locks.waiters, member) do
      {nil, _} ->
        locks

      {waiter, waiters} ->
        Process.demonitor(waiter.monitor, [:flush])
        if waiter.poke, do: Process.cancel_timer(waiter.poke)
        # A grant that raced the timeout is given back by the same script.
        drop(backend, member, waiter.session, waiter.var)
        GenServer.reply(waiter.from, {:error, :timeout})
        %{locks | waiters: waiters}
    end
  end

  def poke(%__MODULE__{} = locks, backend, member) do
    case locks.waiters do
      %{^member => waiter} ->
        args = [RedisBackend.encode_id(waiter.var)]

        pttl =
          case run(backend, LockScripts.poke(), waiter.session, waiter.var, args) do
            {:ok, pttl} when is_integer(pttl) -> pttl
            _ -> -1
          end

        waiter = %{waiter | poke: poke_after(member, pttl)}
        %{locks | waiters: Map.put(locks.waiters, member, waiter)}

      _ ->
        locks
    end
  end

  # A holder or waiter died: what it held or waited for goes to the next waiter.
  def down(%__MODULE__{} = locks, backend, ref) do
    {dead_waiters, waiters} = Enum.split_with(locks.waiters, fn {_, w} -> w.monitor == ref end)
    {dead_holders, held} = Enum.split_with(locks.held, fn {_, h} -> h.monitor == ref end)

    for {member, entry} <- dead_waiters ++ dead_holders do
      if Map.has_key?(entry, :from), do: stop_timers(entry)
      drop(backend, member, entry.session, entry.var)
    end

    %{locks | waiters: Map.new(waiters), held: Map.new(held)}
  end

  # A release made in a caller: forget the holder's monitor.
  def released(%__MODULE__{} = locks, session, var, who) do
    {gone, held} =
      Enum.split_with(locks.held, fn {_, h} -> {h.session, h.var, h.who} == {session, var, who} end)

    for {_, h} <- gone, do: Process.demonitor(h.monitor, [:flush])
    %{locks | held: Map.new(held)}
  end

  # ---------------------------------------------------------------------------------------
  # in the caller's process

  def release(backend, session, var, optimizer) do
    who = :erlang.term_to_binary(optimizer)

    case run(backend, LockScripts.release(), session, var, [who]) do
      {:ok, "ok"} ->
        GenServer.cast(RedisBackend, {:lock_released, session, var, who})
        :ok

      {:ok, "not_owner"} ->
        {:error, :not_lock_owner}

      {:error, _} = error ->
        error
    end
  end

  def renew(backend, session, var, optimizer, lease_ms) do
    who = :erlang.term_to_binary(optimizer)

    case run(backend, LockScripts.renew(), session, var, [who, lease_ms]) do
      {:ok, "ok"} -> :ok
      {:ok, "not_owner"} -> {:error, :not_lock_owner}
      {:error, _} = error -> error
    end
  end

  def info(backend, session, var) do
    case run(backend, LockScripts.info(), session, var, []) do
      {:ok, [nil, _, _, waiters]} ->
        {:ok, %{holder: nil, waiters: waiters}}

      {:ok, [who, token, pttl, waiters]} ->
        holder = %{optimizer_id: decode(who), token: String.to_integer(token), lease_left_ms: pttl}
        {:ok, %{holder: holder, waiters: waiters}}

      {:error, _} = error ->
        error
    end
  end

  # ---------------------------------------------------------------------------------------

  defp hold(locks, member, entry) do
    already =
      Enum.any?(locks.held, fn {_, h} ->
        {h.session, h.var, h.who} == {entry.session, entry.var, entry.who}
      end)

    if already do
      locks
    else
      now = System.system_time(:millisecond)
      holder = Map.merge(entry, %{monitor: Process.monitor(entry.pid), at: now})
      %{locks | held: Map.put(locks.held, member, holder)}
    end
  end

  defp held_keys, do: [:session, :var, :optimizer, :who, :pid, :monitor]

  defp stop_timers(waiter) do
    Process.cancel_timer(waiter.timer)
    if waiter.poke, do: Process.cancel_timer(waiter.poke)
  end

  # Poke when the holder's lease ends (-2: no holder, -1: no lease: soon, to be sure).
  defp poke_after(member, pttl) when is_integer(pttl) and pttl > 0,
    do: Process.send_after(self(), {:lock_poke, member}, pttl + 1)

  defp poke_after(member, _pttl), do: Process.send_after(self(), {:lock_poke, member}, 50)

  defp drop(backend, member, session, var),
    do: run(backend, LockScripts.drop_member(), session, var, [member])

  defp lock(entry, token) do
    %OptimizerCoordinator.Lock{
      session_id: entry.session,
      var_id: entry.var,
      optimizer_id: entry.optimizer,
      token: token,
      acquired_at: System.system_time(:millisecond)
    }
  end

  defp decode(who), do: :erlang.binary_to_term(who)

  defp run(backend, script, session, var, args) do
    keys = RedisBackend.lock_keys(backend, session, var)

    RedisBackend.run_script(backend, script, keys, [
      grants_prefix(backend),
      System.system_time(:millisecond) | args
    ])
  end

  defp grants_prefix(backend), do: backend.prefix <> "grants:"
end
