defmodule DSPex.Bridge.OptimizerCoordinator do
  @moduledoc """
  Locks for concurrent optimizers: fenced, fair, preemptible, with leases and crash cleanup.

  The lock table lives in the Rust core (`dspex_core::coordinator`); no process sits on the
  acquire path. A waiting caller blocks in `receive` until the NIF sends it its grant.

  * Every grant carries a **fencing token** (strictly increasing). `SessionStore` accepts a
    write to a locked variable only with the holder's token (`lock_token:`); any other token
    is refused, also after the holder's lease ran out.
  * `conflict_resolution:` `:abort` fails at once with `{:error, {:lock_held_by, id}}`;
    `:wait` (default) queues until `timeout:`; `:preempt` queues and, if `priority:` is higher
    than the holder's, sends the holder `{:optimization_preempted, var_id, info}` and, after
    `grace_ms:`, `{:lock_lost, var_id, :preempted, held_ms}` before granting.
  * Waiters are served by priority, first come first served within a priority.
  * Leases (`lease_ms:`, default 5 minutes) are renewed by `renew_lock/3`; an expired lease
    frees the lock and sends the holder `{:lock_lost, var_id, :lease_expired, held_ms}`.
  * Events `[:dspex, :bridge, :coordinator, e]`: `lock_acquired` (`wait_time_us`),
    `lock_conflict`, `lock_released`, `preempt_notice` (`grace_ms`), `preempted`,
    `lease_expired` and `holder_down` (`held_duration_ms`), `force_released`, and for runs `progress`,
    `completed`, `failed`, `stalled`.
  * When the optimizer process dies its locks go to the next waiter at once (event
    `holder_down`; on a session under HA the release reaches its replicas too); a waiter
    that dies leaves the queue.
    An acquire for a process that is already gone is refused with
    `{:error, {:holder_down, pid}}`: nothing is ever held for it.
  * When a session moves to another node (`DSPex.Bridge.HAManager`), its locks move with it:
    the holder gets `{:lock_lost, var_id, :moved, held_ms}` here (event `lock_moved`), and the
    new owner holds the lock for it with the **same token** for the rest of its lease, so its
    token-carrying writes (routed there by `SessionStore`) keep working and nobody else's do.
    Waiters here give up (`{:error, :timeout}`).
  * A lock of a session that another node of the cluster owns is taken, released, renewed
    and checked **on the owner**, from any node: it excludes writers on every node, and the
    holder's token is valid wherever it writes (its writes are routed to the owner too).
    The owner holds it for the remote process through a local stand-in that monitors it, so
    the holder's death (or its node's) releases the lock there. Runs started on such a
    lock live on the owner; their ids name it, so every run call reaches it.
  * A waiter that times out never keeps a lock it does not know about: if the grant raced
    the timeout, the lock is released.

  Locks are keyed by `{session_id, var_id}` (`session_id:` option, default `:global`).

  ## Example

      iex> alias DSPex.Bridge.OptimizerCoordinator, as: C
      iex> {:ok, lock} = C.acquire_lock(:doc_lr, "opt_a", self())
      iex> C.acquire_lock(:doc_lr, "opt_b", self(), conflict_resolution: :abort)
      {:error, {:lock_held_by, "opt_a"}}
      iex> C.check_write_allowed(:doc_lr, lock.token)
      :ok
      iex> C.release_lock(:doc_lr, "opt_a")
      :ok
  """

  alias DSPex.Bridge.{Events, Native, Options}
  alias DSPex.Bridge.HAManager.Router
  alias DSPex.Bridge.SessionStore.{Backends, RedisBackend}
  alias DSPex.Bridge.OptimizerCoordinator.{Progress, RemoteHolder}
  import DSPex.Bridge.Options, only: [is_id: 1]

  defmodule Lock do
    @moduledoc "A granted lock."
    @enforce_keys [:session_id, :var_id, :optimizer_id, :token]
    defstruct [:session_id, :var_id, :optimizer_id, :token, :acquired_at]

    @type t :: %__MODULE__{
            session_id: term(),
            var_id: term(),
            optimizer_id: term(),
            token: pos_integer(),
            acquired_at: integer()
          }
  end

  @key :dspex_bridge_coordinator

  @doc false
  def child_spec(_) do
    children =
      Progress.tables() ++
        [RemoteHolder.table(), %{id: :ticker, start: {__MODULE__, :start_link, []}}]

    %{
      id: __MODULE__,
      type: :supervisor,
      start: {Supervisor, :start_link, [children, [strategy: :one_for_all]]}
    }
  end

  @doc false
  # The coordinator resource lives in persistent_term; this process only ticks it, so lease
  # expiries, preemption grace periods and stalled runs are noticed when nobody calls in.
  def start_link do
    :persistent_term.put(@key, Native.coordinator_new())

    {:ok,
     spawn_link(fn ->
       :ok = Native.coordinator_listen(coordinator())
       tick_loop(0)
     end)}
  end

  # Publishes the lock events the NIF reports, and ticks the table at its next deadline (at
  # least every 50 ms, for deadlines added meanwhile).
  defp tick_loop(wait) do
    receive do
      {:dspex_coordinator_event, event} ->
        publish(event)
        tick_loop(0)
    after
      wait ->
        Progress.check_stalls()
        next = Native.coordinator_tick(coordinator())
        tick_loop(if is_integer(next), do: min(max(next, 1), 50), else: 50)
    end
  end

  defp publish({kind, session, var_id, holder, ms}) do
    # A dead holder's release reaches the session's replicas like any other (from a process
    # of its own: the session's process must not hold up the ticks).
    if kind == :holder_down,
      do: spawn(fn -> replicate(session, {:lock_released, var_id, holder}) end)

    {event, measurements} =
      case kind do
        :preempt_notice -> {:preempt_notice, %{grace_ms: ms}}
        :preempted -> {:preempted, %{held_duration_ms: ms}}
        :lease_expired -> {:lease_expired, %{held_duration_ms: ms}}
        :forced -> {:force_released, %{held_duration_ms: ms}}
        :moved -> {:lock_moved, %{held_duration_ms: ms}}
        :holder_down -> {:holder_down, %{held_duration_ms: ms}}
      end

    Events.emit([:dspex, :bridge, :coordinator, event], measurements, %{
      session_id: session,
      var_id: var_id,
      optimizer_id: holder
    })
  end

  defp coordinator, do: :persistent_term.get(@key)

  @doc false
  # HA migration (DSPex.Bridge.HAManager.Replication): the locks held on `session`'s
  # variables, as `[{var_id, optimizer_id, token, lease_left_ms, holder_pid | nil}]`, the pid
  # being the holder itself (not its stand-in here), wherever it runs.
  def held_in(session) do
    for {var, optimizer, token, left, pid} <- Native.coordinator_held_in(coordinator(), session),
        do: {var, optimizer, token, left, holder_of(pid)}
  end

  defp holder_of(nil), do: nil
  defp holder_of(pid), do: RemoteHolder.remote_of(pid) || pid

  @doc false
  def hand_over(session, var_id), do: Native.coordinator_hand_over(coordinator(), session, var_id)

  @doc false
  # A lock that comes with its session from another node. Its holder (when known) is
  # monitored here, through a stand-in when it runs on another node, so that its death
  # releases the lock here too; one already gone adopts nothing.
  def adopt(session, var_id, optimizer_id, token, lease_ms, holder \\ nil) do
    holder =
      if is_pid(holder) and node(holder) != node(), do: RemoteHolder.for(holder), else: holder

    Native.coordinator_adopt(coordinator(), session, var_id, optimizer_id, token, lease_ms, holder)
  end

  # Defaults of acquire_lock/4; `session_id: nil` stands for "not given" (the global lock
  # space, where no session's access rules apply).
  @acquire_defaults %{
    session_id: nil,
    conflict_resolution: :wait,
    timeout: 5_000,
    priority: 0,
    lease_ms: 300_000,
    grace_ms: 1_000,
    caller: nil,
    context: %{}
  }

  @doc """
  Acquires `var_id` for `optimizer_id`, held on behalf of `optimizer_pid` (monitored).

  Options: `session_id:` (default `:global`), `conflict_resolution:` (`:wait`),
  `timeout:` ms (5_000), `priority:` (0), `lease_ms:` (300_000), `grace_ms:` (1_000), and
  `caller:` / `context:`: a session locking another session's variable needs the `:optimize`
  permission on it (`DSPex.Bridge.AccessControl`), else `{:error, :access_denied}`.
  """
  @spec acquire_lock(term(), term(), pid(), keyword()) :: {:ok, Lock.t()} | {:error, term()}
  def acquire_lock(var_id, optimizer_id, optimizer_pid, opts \\ [])

  def acquire_lock(var_id, optimizer_id, optimizer_pid, opts)
      when is_id(var_id) and is_id(optimizer_id) and is_pid(optimizer_pid) do
    case placement(opts) do
      :here ->
        acquire_here(var_id, optimizer_id, optimizer_pid, opts)

      {:redis, session} ->
        acquire_on_redis(session, var_id, optimizer_id, optimizer_pid, opts)

      {:unknown, error} ->
        error

      {:owner, owner} ->
        # The wait happens on the owner; the answer comes back here.
        timeout = Keyword.get(opts, :timeout, 5_000)
        wait = if is_integer(timeout), do: timeout + 5_000, else: :infinity

        Router.call_owner(
          owner,
          __MODULE__,
          :acquire_for_remote,
          [var_id, optimizer_id, optimizer_pid, opts],
          wait
        )
    end
  end

  def acquire_lock(var_id, optimizer_id, optimizer_pid, _opts) do
    cond do
      not is_id(var_id) -> {:error, {:invalid_name, var_id}}
      not is_id(optimizer_id) -> {:error, {:invalid_optimizer_id, optimizer_id}}
      true -> {:error, {:invalid_pid, optimizer_pid}}
    end
  end

  @doc false
  # On the session's owner, for a holder on another node (see RemoteHolder).
  def acquire_for_remote(var_id, optimizer_id, pid, opts) do
    holder = if node(pid) == node(), do: pid, else: RemoteHolder.for(pid)
    acquire_lock(var_id, optimizer_id, holder, opts)
  end

  defp acquire_here(var_id, optimizer_id, optimizer_pid, opts) do
    with {:ok, o} <- acquire_options(opts, @acquire_defaults),
         :ok <- may_optimize(o, var_id) do
      session = o.session_id || :global
      observed = Events.enabled?()
      started = if observed, do: System.monotonic_time(), else: 0

      answer =
        Native.coordinator_acquire(
          session,
          var_id,
          optimizer_id,
          optimizer_pid,
          o.priority,
          o.conflict_resolution,
          o.timeout,
          o.grace_ms,
          o.lease_ms
        )

      result =
        case answer do
          {:granted, token, at} -> {:ok, lock(session, var_id, optimizer_id, token, at)}
          {:already_held, token, at} -> {:ok, lock(session, var_id, optimizer_id, token, at)}
          {:held_by, holder} -> {:error, {:lock_held_by, holder}}
          {:queued, ticket} -> await_grant(session, var_id, optimizer_id, ticket, o.timeout)
          # Nothing is held for a process that is already gone (its exit would never come).
          :holder_down -> {:error, {:holder_down, optimizer_pid}}
        end

      DSPex.Bridge.Analytics.Recorder.count_lock(match?({:ok, _}, result))
      if observed, do: emit_acquire(result, session, var_id, optimizer_id, started)

      with {:ok, lock} <- result,
           do:
             replicate(
               session,
               {:lock_held, var_id, optimizer_id, lock.token, o.lease_ms, holder_of(optimizer_pid)}
             )

      result
    end
  rescue
    ArgumentError -> {:error, {:invalid_name, {var_id, optimizer_id}}}
  end

  # The options walked once into a map of every setting (a hot path: no intermediate map).
  @min_i64 -9_223_372_036_854_775_808
  @max_i64 9_223_372_036_854_775_807
  @max_u64 18_446_744_073_709_551_615

  defp acquire_options([], o), do: {:ok, o}

  defp acquire_options([{key, value} | rest], o) when is_atom(key) do
    case acquire_option(key, value) do
      true -> acquire_options(rest, %{o | key => value})
      false -> {:error, {:invalid_option, {key, value}}}
      :unknown -> {:error, {:invalid_option, {:unknown, key}}}
    end
  end

  defp acquire_options([other | _], _o), do: {:error, {:invalid_option, other}}
  defp acquire_options(other, _o), do: {:error, {:invalid_option, {:not_a_keyword_list, other}}}

  defp acquire_option(:session_id, v), do: is_id(v)
  defp acquire_option(:conflict_resolution, v), do: v in [:wait, :abort, :preempt]
  defp acquire_option(:timeout, v), do: Options.ms?(v)
  defp acquire_option(:priority, v), do: Options.int_in?(v, @min_i64, @max_i64)
  defp acquire_option(:lease_ms, v), do: Options.pos_ms?(v)
  defp acquire_option(:grace_ms, v), do: Options.ms?(v)
  defp acquire_option(:caller, v), do: is_id(v)
  defp acquire_option(:context, v), do: is_map(v)
  defp acquire_option(_key, _v), do: :unknown

  # A lock on another session's variable needs :optimize on it.
  defp may_optimize(%{caller: caller, session_id: session} = o, var_id)
       when caller != nil and session != nil and caller != session,
       do:
         DSPex.Bridge.AccessControl.decide(
           {session, var_id},
           caller,
           :optimize,
           o.context
         )

  defp may_optimize(_o, _var_id), do: :ok

  defp await_grant(session, var_id, optimizer_id, ticket, timeout) do
    receive do
      {:dspex_lock_granted, ^ticket, token, waited_us} ->
        DSPex.Bridge.Analytics.observe(:lock_wait_seconds, waited_us / 1.0e6)
        {:ok, lock(session, var_id, optimizer_id, token, System.system_time(:millisecond))}
    after
      timeout ->
        case Native.coordinator_cancel(coordinator(), session, var_id, ticket) do
          # The grant raced the timeout: give the lock back and drop the message.
          {:granted, _token} ->
            Native.coordinator_release(session, var_id, optimizer_id)

            receive do
              {:dspex_lock_granted, ^ticket, _, _} -> :ok
            after
              0 -> :ok
            end

          _ ->
            :ok
        end

        {:error, :timeout}
    end
  end

  @doc """
  Acquires several variables all or nothing, in one canonical order (so overlapping batches
  never deadlock). On failure, the locks already taken are released. Options as
  `acquire_lock/4` plus `optimizer_pid:` (default the caller).
  """
  @spec acquire_locks([term()], term(), keyword()) :: {:ok, [Lock.t()]} | {:error, term()}
  def acquire_locks(var_ids, optimizer_id, opts \\ [])

  def acquire_locks(var_ids, optimizer_id, opts) when is_list(var_ids) do
    cond do
      not Options.proper_list?(var_ids) ->
        {:error, {:invalid_variables, var_ids}}

      not (Options.proper_list?(opts) and Keyword.keyword?(opts)) ->
        {:error, {:invalid_option, {:not_a_keyword_list, opts}}}

      true ->
        {pid, opts} = Keyword.pop(opts, :optimizer_pid, self())
        acquire_all(var_ids, optimizer_id, pid, opts)
    end
  end

  def acquire_locks(other, _optimizer_id, _opts), do: {:error, {:invalid_variables, other}}

  defp acquire_all(var_ids, optimizer_id, pid, opts) do
    var_ids
    |> Enum.uniq()
    |> Enum.sort()
    |> Enum.reduce_while({:ok, []}, fn var, {:ok, held} ->
      case acquire_lock(var, optimizer_id, pid, opts) do
        {:ok, lock} ->
          {:cont, {:ok, [lock | held]}}

        error ->
          for l <- held, do: release_lock(l.var_id, optimizer_id, session_id: l.session_id)
          {:halt, error}
      end
    end)
    |> case do
      {:ok, held} -> {:ok, Enum.reverse(held)}
      error -> error
    end
  end

  @doc "Releases: `:ok` or `{:error, :not_lock_owner}`. Option `session_id:`."
  @spec release_lock(term(), term(), keyword()) :: :ok | {:error, term()}
  def release_lock(var_id, optimizer_id, opts \\ [])

  def release_lock(var_id, optimizer_id, []) when is_id(var_id) and is_id(optimizer_id),
    do: release(:global, var_id, optimizer_id)

  def release_lock(var_id, optimizer_id, opts) do
    on_owner(opts, :release_lock, [var_id, optimizer_id, opts], fn ->
      release_here(var_id, optimizer_id, opts)
    end)
  end

  defp release_here(var_id, optimizer_id, opts) do
    with {:ok, %{session_id: session}} <- options(opts),
         :ok <- ids(var_id, optimizer_id) do
      release(session, var_id, optimizer_id)
    end
  end

  defp release(session, var_id, optimizer_id) do
    result = Native.coordinator_release(session, var_id, optimizer_id)
    if result == :ok, do: replicate(session, {:lock_released, var_id, optimizer_id})

    if result == :ok and Events.enabled?(),
      do:
        Events.emit([:dspex, :bridge, :coordinator, :lock_released], %{}, %{
          session_id: session,
          var_id: var_id,
          optimizer_id: optimizer_id
        })

    result
  rescue
    ArgumentError -> {:error, {:invalid_name, {var_id, optimizer_id}}}
  end

  @doc "Renews the lease: `:ok` or `{:error, :not_lock_owner}`. Options `session_id:`, `lease_ms:`."
  @spec renew_lock(term(), term(), keyword()) :: :ok | {:error, term()}
  def renew_lock(var_id, optimizer_id, opts \\ []) do
    on_owner(opts, :renew_lock, [var_id, optimizer_id, opts], fn ->
      renew_here(var_id, optimizer_id, opts)
    end)
  end

  defp renew_here(var_id, optimizer_id, opts) do
    with {:ok, o} <- options(opts, %{lease_ms: &Options.pos_ms?/1}),
         :ok <- ids(var_id, optimizer_id) do
      lease = Map.get(o, :lease_ms, 300_000)
      Native.coordinator_renew(coordinator(), o.session_id, var_id, optimizer_id, lease)
    end
  end

  @doc "True if someone holds `var_id` (option `session_id:`)."
  @spec locked?(term(), keyword()) :: boolean()
  def locked?(var_id, opts \\ []) do
    match?({:ok, %{holder: %{}}}, get_lock_info(var_id, opts))
  end

  @doc false
  @deprecated "Use locked?/2"
  @spec is_locked?(term(), keyword()) :: boolean()
  def is_locked?(var_id, opts \\ []), do: locked?(var_id, opts)

  @doc """
  `{:ok, %{holder: nil | %{optimizer_id, token, priority, held_ms, lease_left_ms},
  waiters: [%{optimizer_id, ticket, priority}]}}`.
  """
  @spec get_lock_info(term(), keyword()) :: {:ok, map()} | {:error, term()}
  def get_lock_info(var_id, opts \\ []),
    do: on_owner(opts, :get_lock_info, [var_id, opts], fn -> lock_info_here(var_id, opts) end)

  defp lock_info_here(var_id, opts) do
    with {:ok, %{session_id: session}} <- options(opts),
         :ok <- ids(var_id, :x) do
      {holder, waiters} = Native.coordinator_info(coordinator(), session, var_id)

      holder =
        case holder do
          nil ->
            nil

          {o, token, p, held, left} ->
            %{optimizer_id: o, token: token, priority: p, held_ms: held, lease_left_ms: left}
        end

      {:ok,
       %{
         holder: holder,
         waiters: for({o, t, p} <- waiters, do: %{optimizer_id: o, ticket: t, priority: p})
       }}
    end
  end

  @doc """
  Takes `var_id` from its holder (it gets `{:lock_lost, var_id, :forced, held_ms}`).

  Options `session_id:` and `caller:`. Taking a lock away is a session-wide operation: a
  `caller:` other than the variable's session is refused with `{:error, :access_denied}`
  (a `:global` lock belongs to no session, so any `caller:` is refused for it). Code that
  passes no `caller:` acts for the owner.
  """
  @spec force_release(term(), term(), keyword()) :: :ok | {:error, term()}
  def force_release(var_id, reason \\ :forced, opts \\ []) do
    on_owner(opts, :force_release, [var_id, reason, opts], fn ->
      force_release_here(var_id, reason, opts)
    end)
  end

  defp force_release_here(var_id, reason, opts) do
    with {:ok, %{session_id: session} = o} <- options(opts, %{caller: &Options.id?/1}),
         :ok <- ids(var_id, :x),
         :ok <- owner_only(o) do
      if Native.coordinator_force_release(coordinator(), session, var_id) do
        replicate(session, {:lock_released, var_id, :any})

        Events.emit([:dspex, :bridge, :coordinator, :lock_released], %{}, %{
          session_id: session,
          var_id: var_id,
          reason: reason
        })

        :ok
      else
        {:error, :not_locked}
      end
    end
  end

  @doc """
  Whether a write to `var_id` with `token` (or `nil`) is allowed: `:ok`,
  `{:error, :stale_token}` or `{:error, {:locked_by, optimizer_id}}`.
  """
  @spec check_write_allowed(term(), pos_integer() | nil, keyword()) :: :ok | {:error, term()}
  def check_write_allowed(var_id, token, opts \\ []) do
    on_owner(opts, :check_write_allowed, [var_id, token, opts], fn ->
      check_write_here(var_id, token, opts)
    end)
  end

  defp check_write_here(var_id, token, opts) do
    with {:ok, %{session_id: session}} <- options(opts),
         :ok <- ids(var_id, :x) do
      if is_nil(token) or Options.int_in?(token, 1, @max_u64),
        do: Native.coordinator_check_write(coordinator(), session, var_id, token),
        else: {:error, {:invalid_token, token}}
    end
  end

  # ---------------------------------------------------------------------------------------
  # optimization runs

  @doc """
  Starts tracking an optimization run on a lock you hold: `{:ok, optimization_id}`.

  Options: `objective:` `{:minimize, metric}` (default `{:minimize, :loss}`) or
  `{:maximize, metric}`; `stall_reports:` reports without improvement before `stalled` is
  emitted (default 10); `stall_ms:` silence before `stalled` (default 60_000); `lease_ms:`
  the lease each report renews (default 300_000).
  """
  @spec start_optimization(Lock.t(), keyword()) :: {:ok, String.t()} | {:error, term()}
  def start_optimization(lock, opts \\ [])

  def start_optimization(%Lock{} = lock, opts) do
    owner = if is_id(lock.session_id), do: Router.remote_owner(lock.session_id)

    if owner,
      do: Router.call_owner(owner, __MODULE__, :start_optimization, [lock, opts]),
      else: Progress.start(lock, opts, coordinator())
  end

  def start_optimization(other, _opts), do: {:error, {:invalid_lock, other}}

  @doc """
  Reports an iteration: renews the lease, keeps the best so far by the objective (on
  `metrics[metric]`), emits `progress`, and `stalled` after `stall_reports` reports without
  improvement. If the lock was lost, the run fails and `{:error, :not_lock_owner}` is returned.
  """
  @spec report_progress(String.t(), integer(), term(), map()) :: :ok | {:error, term()}
  def report_progress(optimization_id, iteration, value, metrics),
    do:
      on_run_node(
        optimization_id,
        :report_progress,
        [optimization_id, iteration, value, metrics],
        fn ->
          Progress.report(optimization_id, iteration, value, metrics, coordinator())
        end
      )

  @doc """
  Writes `final_value` to the variable through `SessionStore` with the lock's fencing token,
  releases the lock and records the run: `{:ok, variable}`. A refused write (a lost lock, a
  value the variable's type refuses) leaves the run running and returns the error.
  """
  @spec complete_optimization(String.t(), term(), map()) :: {:ok, term()} | {:error, term()}
  def complete_optimization(optimization_id, final_value, final_metrics \\ %{}),
    do:
      on_run_node(
        optimization_id,
        :complete_optimization,
        [optimization_id, final_value, final_metrics],
        fn -> Progress.complete(optimization_id, final_value, final_metrics) end
      )

  @doc "Ends a run as failed and releases its lock."
  @spec fail_optimization(String.t(), term()) :: :ok | {:error, term()}
  def fail_optimization(optimization_id, reason),
    do:
      on_run_node(optimization_id, :fail_optimization, [optimization_id, reason], fn ->
        Progress.fail(optimization_id, reason)
      end)

  @doc "The state of a run, running or finished."
  @spec get_optimization_status(String.t()) :: {:ok, map()} | {:error, term()}
  def get_optimization_status(optimization_id),
    do:
      on_run_node(optimization_id, :get_optimization_status, [optimization_id], fn ->
        Progress.status(optimization_id)
      end)

  @doc "Every running optimization."
  @spec list_active_optimizations() :: [map()]
  def list_active_optimizations, do: Progress.active()

  @doc "Finished runs on `var_id`, newest first (at most 100 are kept). Option `session_id:`."
  @spec get_optimization_history(term(), pos_integer(), keyword()) :: [map()] | {:error, term()}
  def get_optimization_history(var_id, limit \\ 10, opts \\ []) do
    with {:ok, %{session_id: session}} <- options(opts),
         :ok <- ids(var_id, :x) do
      if is_integer(limit) and limit > 0,
        do: Progress.history(session, var_id, limit),
        else: {:error, {:invalid_option, {:limit, limit}}}
    end
  end

  @doc false
  # SessionStore's check on every write (arguments already valid).
  def write_allowed(session_id, name, token) do
    Native.coordinator_check_write(coordinator(), session_id, name, token)
  rescue
    ArgumentError -> {:error, {:invalid_name, name}}
  end

  # A lock of a session under HA goes to its replicas through the session's process, in
  # order with the session's writes (see SessionStore.Session): a replica that becomes the
  # owner holds it with the same token. The lease is sent as a wall-clock deadline.
  defp replicate(:global, _op), do: :ok

  defp replicate(session, op) do
    if DSPex.Bridge.SessionStore.Session.replicated?(session) do
      op =
        case op do
          {:lock_held, var, optimizer, token, lease_ms, holder} ->
            {:lock_held, var, optimizer, token, System.system_time(:millisecond) + lease_ms, holder}

          other ->
            other
        end

      DSPex.Bridge.SessionStore.Session.record(session, op)
    end

    :ok
  end

  @doc false
  # A promoted replica's lock operations (SessionStore.Session), applied to this node's table.
  def apply_replicated(session, {:lock_held, var, optimizer, token, until_ms, holder}) do
    lease = max(until_ms - System.system_time(:millisecond), 1)
    _ = adopt(session, var, optimizer, token, lease, holder)
    :ok
  end

  def apply_replicated(session, {:lock_released, var, :any}) do
    _ = Native.coordinator_force_release(coordinator(), session, var)
    :ok
  end

  def apply_replicated(session, {:lock_released, var, optimizer}) do
    _ = Native.coordinator_release(session, var, optimizer)
    :ok
  end

  # The node that owns the session `opts` names, when another node does.
  # Where the locks of the `session_id:` in `opts` live: here, on the node that owns the
  # session (HAManager), or on the Redis server for a session of the Redis backend.
  defp placement(opts) when is_list(opts) do
    # Options are checked later, where they are used: an improper list is not routed.
    case Options.proper_list?(opts) and List.keyfind(opts, :session_id, 0) do
      {:session_id, s} when s != :global and is_id(s) ->
        case Router.remote_owner(s) do
          nil -> redis_or_here(s)
          owner -> {:owner, owner}
        end

      _ ->
        :here
    end
  end

  defp placement(_opts), do: :here

  # A lock of a session that may be on Redis is never taken here while Redis cannot say.
  defp redis_or_here(session) do
    case Backends.redis_session(session) do
      {:ok, true} -> {:redis, session}
      {:ok, false} -> :here
      {:error, _} = error -> {:unknown, error}
    end
  end

  defp on_owner(opts, fun, args, here) do
    case placement(opts) do
      :here -> here.()
      {:owner, owner} -> Router.call_owner(owner, __MODULE__, fun, args)
      {:redis, session} -> on_redis(session, fun, args)
      {:unknown, error} -> error
    end
  end

  # A Redis session's locks: only its owner session may take them (see RedisBackend).
  defp acquire_on_redis(session, var_id, optimizer_id, optimizer_pid, opts) do
    with {:ok, o} <- acquire_options(opts, @acquire_defaults),
         :ok <- redis_owner(o.caller, session),
         {:ok, backend} <- Backends.redis() do
      result = RedisBackend.acquire_lock(backend, session, var_id, optimizer_id, optimizer_pid, o)
      DSPex.Bridge.Analytics.Recorder.count_lock(match?({:ok, _}, result))
      result
    end
  end

  defp on_redis(session, :release_lock, [var_id, optimizer_id, opts]) do
    with {:ok, _o} <- options(opts),
         :ok <- ids(var_id, optimizer_id),
         {:ok, backend} <- Backends.redis(),
         do: RedisBackend.release_lock(backend, session, var_id, optimizer_id)
  end

  defp on_redis(session, :renew_lock, [var_id, optimizer_id, opts]) do
    with {:ok, o} <- options(opts, %{lease_ms: &Options.pos_ms?/1}),
         :ok <- ids(var_id, optimizer_id),
         {:ok, backend} <- Backends.redis(),
         do:
           RedisBackend.renew_lock(
             backend,
             session,
             var_id,
             optimizer_id,
             Map.get(o, :lease_ms, 300_000)
           )
  end

  defp on_redis(session, :get_lock_info, [var_id, opts]) do
    with {:ok, _o} <- options(opts),
         :ok <- ids(var_id, :x),
         {:ok, backend} <- Backends.redis(),
         do: RedisBackend.lock_info(backend, session, var_id)
  end

  defp on_redis(_session, fun, _args), do: {:error, {:not_supported, fun}}

  defp redis_owner(caller, session) when caller in [nil, session], do: :ok
  defp redis_owner(_caller, _session), do: {:error, :access_denied}

  # A run's id names the node it lives on (see Progress.start/3).
  defp on_run_node(id, fun, args, here) do
    case Progress.node_of(id) do
      node when node in [nil, node()] -> here.()
      node -> Router.call_owner(node, __MODULE__, fun, args)
    end
  end

  defp lock(session, var_id, optimizer_id, token, acquired_at) do
    %Lock{
      session_id: session,
      var_id: var_id,
      optimizer_id: optimizer_id,
      token: token,
      acquired_at: acquired_at
    }
  end

  # `session_id:` (default `:global`) and the function's own options, checked.
  defp options(opts, spec \\ %{}) do
    case Options.take(opts, Map.put(spec, :session_id, fn _ -> true end)) do
      {:ok, %{session_id: s}} when not is_id(s) -> {:error, {:invalid_session_id, s}}
      {:ok, o} -> {:ok, Map.put_new(o, :session_id, :global)}
      error -> error
    end
  end

  defp owner_only(%{caller: caller, session_id: session}) when caller !== session,
    do: {:error, :access_denied}

  defp owner_only(_o), do: :ok

  defp ids(var_id, optimizer_id) do
    cond do
      not is_id(var_id) -> {:error, {:invalid_name, var_id}}
      not is_id(optimizer_id) -> {:error, {:invalid_optimizer_id, optimizer_id}}
      true -> :ok
    end
  end

  defp emit_acquire(result, session, var_id, optimizer_id, started) do
    if Events.enabled?() do
      us = System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)
      meta = %{session_id: session, var_id: var_id, optimizer_id: optimizer_id}

      case result do
        {:ok, lock} ->
          Events.emit(
            [:dspex, :bridge, :coordinator, :lock_acquired],
            %{wait_time_us: us},
            Map.put(meta, :token, lock.token)
          )

        {:error, reason} ->
          Events.emit(
            [:dspex, :bridge, :coordinator, :lock_conflict],
            %{wait_time_us: us},
            Map.put(meta, :reason, reason)
          )
      end
    end
  end
end
