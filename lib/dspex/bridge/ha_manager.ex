defmodule DSPex.Bridge.HAManager do
  @moduledoc """
  Session ownership across BEAM nodes: placement, migration, replicas, failover, draining.

  Erlang distribution is the cluster: every node running `:dspex_bridge` runs this process,
  which greets the others as they connect (`:net_kernel.monitor_nodes/1`) and keeps a
  directory of which node owns which registered session, at which **epoch**. The rules of
  ownership (who may write, what a newer epoch means) are the Rust state machine
  `dspex_core::ha::ownership`; placement is rendezvous hashing (`dspex_core::ha::placement`).

  ## Lifecycle of a session

      {:ok, _} = SessionStore.create_session("s1")
      {:ok, epoch} = HAManager.register_session("s1")          # owned here, replicated
      {:ok, node} = HAManager.get_session_owner("s1")
      {:ok, info} = HAManager.migrate_session("s1", :"b@127.0.0.1")

  * **Migration** (`migrate_session/3`): the session's process exports a checked snapshot
    (variables with history, dependency graph, access rules) inside an envelope carrying the
    epoch, sends it with `:erpc`, the target verifies checksum and format version, imports it
    and takes ownership at a new epoch; the source then deletes its copy. Writes that reach
    the session's process meanwhile wait in its mailbox and are then forwarded, in order, to
    the new owner: a caller gets its reply only once the new owner committed the write, so no
    acknowledged write is lost. On any failure the session stays where it was, writable.
  * **Routing**: a `DSPex.Bridge.SessionStore` call on a node that does not hold the session
    goes to the owner the directory names, transparently.
  * **Replication**: every committed write goes to `replicas` nodes (default 1, chosen by
    placement among the other nodes). `replication: :sync` (default) acknowledges a write
    after each reachable replica stored it, so a crash of the owner loses nothing
    acknowledged. `:async` sends it and acknowledges at once: what is lost when the owner
    dies is what was still in flight — the writes of the last moments before the crash,
    bounded by the distribution buffer (measured by the failover test and reported in the
    README).
  * **Failover**: on `:nodedown` the best-placed live replica of each session the dead node
    owned imports its copy, replays the writes it received, and takes ownership at a new
    epoch.
  * **Epoch fencing**: a replica refuses changes from an owner older than the epoch it
    knows; a former owner that learns a newer epoch (a healed partition) drops its copy and
    routes its callers to the new owner. A node cut off from its replicas keeps writing
    until the partition heals (there is no quorum); those writes are then discarded in
    favour of the newer owner.
  * **Draining** (`start_draining/1`, `await_drainage/1`, `stop_draining/1`): the node hands
    every session it owns to its placement successor and takes no new ones.

  ## Configuration

      config :dspex_bridge, :ha,
        cluster_nodes: [:"a@127.0.0.1", :"b@127.0.0.1"],  # connected at start
        weight: 1.0,          # share of sessions; 0 = never an owner or replica
        replicas: 1,
        replication: :sync    # or :async

  `configure/1` changes `weight`, `replicas` and `replication` at run time.

  A migration sends the whole session as one distribution message (about 150 bytes per
  variable with one history entry): for sessions of many thousands of variables, raise the
  distribution buffer limit (`+zdbbl 65536` in `vm.args`), or the sender is suspended while
  the default 1 MB buffer drains. Locks held on the session's variables move with it (see
  `DSPex.Bridge.OptimizerCoordinator`); breakers and analytics stay per node by design (a
  breaker guards its node's Python workers; `Analytics.get_dashboard(:cluster)` merges every
  node's metrics).

  ## Events

  `[:dspex, :bridge, :ha, event]` with `event` one of `:session_registered`,
  `:migration_started`, `:migration_completed`, `:migration_failed` (measurements
  `duration_ms`, `bytes`), `:failover`, `:node_down`, `:drain_started`, `:drain_completed`.
  """
  use GenServer

  alias DSPex.Bridge.{Events, Native, Options, SessionStore}
  alias DSPex.Bridge.HAManager.{Directory, Replication}
  import DSPex.Bridge.Options, only: [is_id: 1]

  @table_key {__MODULE__, :table}
  @config_key {__MODULE__, :config}

  @type session_id :: SessionStore.session_id()
  @type epoch :: {non_neg_integer(), binary()}

  # ---------------------------------------------------------------------------------------
  # API

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc false
  # The tables first (each with its own owner, so they survive this process), then this.
  def children do
    tables = for t <- Directory.tables() ++ Replication.tables(), do: {DSPex.Bridge.TableOwner, t}
    tables ++ [__MODULE__]
  end

  @doc """
  Puts a session that lives on this node under HA management: this node owns it at a fresh
  epoch, its replicas get a copy, and every node's directory learns the owner.

  Options: `placement: :local` (default) keeps it here; `placement: :hash` then moves it to
  its rendezvous-hash owner among the live nodes.
  """
  @spec register_session(session_id(), keyword()) :: {:ok, epoch()} | {:error, term()}
  def register_session(session_id, opts \\ [])

  def register_session(session_id, opts) when is_id(session_id) do
    with :ok <- check_opts(opts, [:placement]),
         :ok <- check_placement(Keyword.get(opts, :placement, :local)),
         {:ok, pid} <- local_session(session_id),
         key = key(session_id),
         {:ok, epoch} <- refusal(Native.ha_apply(table(), key, :register)) do
      replicas = choose_replicas(key, [node()])

      with :ok <- GenServer.call(pid, {:ha_attach, %{key: key, epoch: epoch, replicas: replicas}}) do
        Directory.announce(session_id, node(), epoch, replicas)
        emit(:session_registered, %{}, %{session_id: session_id, epoch: epoch})
        place(session_id, key, epoch, Keyword.get(opts, :placement, :local))
      end
    end
  end

  def register_session(session_id, _opts), do: {:error, {:invalid_session_id, session_id}}

  defp place(_id, _key, epoch, :local), do: {:ok, epoch}

  defp place(id, key, epoch, :hash) do
    case placement_owner(key, []) do
      target when target in [nil, node()] ->
        {:ok, epoch}

      target ->
        with {:ok, %{epoch: new}} <- migrate_session(id, target), do: {:ok, new}
    end
  end

  defp check_placement(p) when p in [:local, :hash], do: :ok
  defp check_placement(other), do: {:error, {:invalid_option, {:placement, other}}}

  @doc "The node that owns a registered session."
  @spec get_session_owner(session_id()) :: {:ok, node()} | {:error, :not_registered}
  def get_session_owner(session_id) do
    case Directory.lookup(session_id) do
      {owner, _epoch, _replicas} -> {:ok, owner}
      nil -> {:error, :not_registered}
    end
  end

  @doc """
  Moves a session to `target`: checkpoint, transfer, verify, switch ownership, clean up.
  Called on any node: it runs on the owner. `{:ok, %{epoch:, bytes:, duration_ms:}}`.

  Errors (the session stays where it was and keeps working): `{:node_unavailable, node}`
  (unknown, down, or draining), `:already_migrating`, `:not_registered`, `{:not_owner, n}`,
  `{:transfer_failed, reason}` (the target refused or failed to import the snapshot).
  """
  @spec migrate_session(session_id(), node(), keyword()) :: {:ok, map()} | {:error, term()}
  def migrate_session(session_id, target, opts \\ [])

  def migrate_session(session_id, target, opts) when is_atom(target) and is_list(opts) do
    case Options.take(opts, %{timeout: &Options.pos_ms?/1}) do
      {:ok, o} -> migrate_checked(session_id, target, opts, Map.get(o, :timeout, 30_000))
      error -> error
    end
  end

  def migrate_session(_session_id, target, opts),
    do: {:error, {:invalid_option, {:migrate, target, opts}}}

  defp migrate_checked(session_id, target, opts, timeout) do
    case Directory.lookup(session_id) do
      nil ->
        {:error, :not_registered}

      {owner, _, _} when owner != node() ->
        :erpc.call(owner, __MODULE__, :migrate_session, [session_id, target, opts], timeout + 1_000)

      {_, _, _} ->
        migrate_here(session_id, target, timeout)
    end
  catch
    :error, {:erpc, reason} -> {:error, {:owner_unreachable, reason}}
  end

  defp migrate_here(session_id, target, timeout) do
    key = key(session_id)

    cond do
      target == node() ->
        {:error, {:node_unavailable, target}}

      target not in eligible_nodes() ->
        {:error, {:node_unavailable, target}}

      true ->
        with {:ok, pid} <- local_session(session_id),
             :ok <- begin_out(key, target) do
          started = System.monotonic_time(:millisecond)
          emit(:migration_started, %{}, %{session_id: session_id, target: target})

          case call_session(pid, {:ha_migrate, target, timeout}, timeout + 1_000) do
            {:ok, %{epoch: epoch, bytes: bytes}} ->
              ms = System.monotonic_time(:millisecond) - started

              emit(:migration_completed, %{duration_ms: ms, bytes: bytes}, %{
                session_id: session_id,
                target: target,
                epoch: epoch
              })

              {:ok, %{epoch: epoch, bytes: bytes, duration_ms: ms}}

            {:error, reason} ->
              # The session process calls it off itself; this covers a call that never
              # reached it (then it must apply the writes it held).
              if Native.ha_apply(table(), key, :abort_out) == :ok, do: send(pid, :ha_resume)
              ms = System.monotonic_time(:millisecond) - started

              emit(:migration_failed, %{duration_ms: ms, bytes: 0}, %{
                session_id: session_id,
                target: target,
                reason: reason
              })

              {:error, reason}
          end
        end
    end
  end

  defp call_session(pid, msg, timeout) do
    GenServer.call(pid, msg, timeout)
  catch
    :exit, reason -> {:error, {:session_unavailable, reason}}
  end

  defp begin_out(key, target) do
    case Native.ha_apply(table(), key, {:begin_out, Atom.to_string(target)}) do
      :ok -> :ok
      {:error, :migrating} -> {:error, :already_migrating}
      {:error, {:not_owner, owner, _}} -> {:error, {:not_owner, owner}}
      {:error, other} -> {:error, other}
    end
  end

  @doc """
  Starts draining `node` (default this one): it takes no new sessions and hands every
  session it owns to its placement successor. Returns at once; see `await_drainage/1`.
  """
  @spec start_draining(node()) :: :ok | {:error, {:invalid_node, term()}}
  def start_draining(node \\ node())

  def start_draining(node) when is_atom(node) do
    GenServer.abcast([node() | Node.list()], __MODULE__, {:draining, node, true})
    :ok
  end

  def start_draining(other), do: {:error, {:invalid_node, other}}

  @doc "Lets `node` own sessions again."
  @spec stop_draining(node()) :: :ok | {:error, {:invalid_node, term()}}
  def stop_draining(node \\ node())

  def stop_draining(node) when is_atom(node) do
    GenServer.abcast([node() | Node.list()], __MODULE__, {:draining, node, false})
    :ok
  end

  def stop_draining(other), do: {:error, {:invalid_node, other}}

  @doc """
  Waits until this node owns no session (`timeout:` ms, default 30,000): `:ok` or
  `{:error, {:timeout, still_owned}}`.
  """
  @spec await_drainage(keyword()) :: :ok | {:error, {:timeout, [session_id()]} | term()}
  def await_drainage(opts \\ []) do
    with :ok <- check_opts(opts, [:timeout]),
         timeout when is_integer(timeout) and timeout >= 0 <- Keyword.get(opts, :timeout, 30_000) do
      await_drained(System.monotonic_time(:millisecond) + timeout)
    else
      {:error, _} = error -> error
      timeout -> {:error, {:invalid_option, {:timeout, timeout}}}
    end
  end

  defp await_drained(deadline) do
    Events.subscribe([:dspex, :bridge, :ha, :drain_completed])

    try do
      wait_drained(deadline)
    after
      Events.unsubscribe([:dspex, :bridge, :ha, :drain_completed])
    end
  end

  defp wait_drained(deadline) do
    case Directory.owned_by(node()) do
      [] ->
        :ok

      owned ->
        left = deadline - System.monotonic_time(:millisecond)

        if left <= 0 do
          {:error, {:timeout, owned}}
        else
          receive do
            {:dspex_event, [:dspex, :bridge, :ha, :drain_completed], _, _} -> :ok
          after
            min(left, 50) -> :ok
          end

          wait_drained(deadline)
        end
    end
  end

  @doc "The live nodes of the HA cluster with their weights and draining flags."
  @spec members() :: %{node() => %{weight: float(), draining: boolean()}}
  def members, do: GenServer.call(__MODULE__, :members)

  @doc """
  Changes this node's `weight:`, `replicas:` (0..5) or `replication:` (`:sync | :async`)
  and tells the other nodes.
  """
  @spec configure(keyword()) :: :ok | {:error, term()}
  def configure(opts) when is_list(opts) do
    with :ok <- check_opts(opts, [:weight, :replicas, :replication]),
         {:ok, config} <- merge_config(config(), opts) do
      GenServer.call(__MODULE__, {:configure, config})
    end
  end

  def configure(other), do: {:error, {:invalid_option, other}}

  # ---------------------------------------------------------------------------------------
  # shared with Replication, Directory and SessionStore

  @doc false
  # A fresh application start holds no sessions: no ownership survives it.
  def forget_ownership do
    :persistent_term.erase(@table_key)
    :ok
  end

  @doc false
  def table, do: :persistent_term.get(@table_key) |> elem(1)

  @doc false
  def config, do: :persistent_term.get(@config_key)

  @doc false
  def key(id) when is_binary(id), do: "s:" <> id
  def key(id) when is_atom(id), do: "a:" <> Atom.to_string(id)

  @doc false
  def emit(event, measurements, metadata),
    do: Events.emit([:dspex, :bridge, :ha, event], measurements, metadata)

  @doc false
  # Nodes that may own or hold sessions: live, weighted, not draining.
  def eligible_nodes, do: GenServer.call(__MODULE__, :eligible)

  @doc false
  def choose_replicas(key, exclude) do
    n = config().replicas

    if n == 0 do
      []
    else
      candidates = eligible_weighted() |> Enum.reject(fn {node, _} -> node in exclude end)
      candidates |> rank(key) |> Enum.take(n)
    end
  end

  @doc false
  def placement_owner(key, exclude) do
    eligible_weighted()
    |> Enum.reject(fn {node, _} -> node in exclude end)
    |> rank(key)
    |> List.first()
  end

  @doc false
  def rank(weighted, key) do
    named = Enum.map(weighted, fn {node, w} -> {Atom.to_string(node), w / 1} end)
    key |> Native.ha_rank(named) |> Enum.map(&(weighted |> Enum.at(&1) |> elem(0)))
  end

  defp eligible_weighted, do: GenServer.call(__MODULE__, :eligible_weighted)

  @doc false
  def local_session(session_id) do
    case :ets.lookup(SessionStore.Tables.sessions(), session_id) do
      [{_, _meta, pid, _touch}] -> {:ok, pid}
      [] -> {:error, :session_not_found}
    end
  rescue
    ArgumentError -> {:error, {:invalid_session_id, session_id}}
  end

  @doc false
  def refusal({:ok, _} = ok), do: ok
  def refusal(:ok), do: :ok
  def refusal({:error, :present}), do: {:error, :already_registered}
  def refusal({:error, other}), do: {:error, other}

  defp check_opts(opts, allowed) when is_list(opts) do
    case Enum.find(opts, fn o ->
           not match?({k, _} when is_atom(k), o) or elem(o, 0) not in allowed
         end) do
      nil -> :ok
      bad -> {:error, {:invalid_option, bad}}
    end
  end

  defp check_opts(opts, _allowed), do: {:error, {:invalid_option, opts}}

  defp merge_config(config, opts) do
    Enum.reduce_while(opts, {:ok, config}, fn
      {:weight, w}, {:ok, c} when is_number(w) and w >= 0 -> {:cont, {:ok, %{c | weight: w / 1}}}
      {:replicas, n}, {:ok, c} when n in 0..5 -> {:cont, {:ok, %{c | replicas: n}}}
      {:replication, m}, {:ok, c} when m in [:sync, :async] -> {:cont, {:ok, %{c | replication: m}}}
      {:cluster_nodes, l}, {:ok, c} when is_list(l) -> {:cont, {:ok, %{c | cluster_nodes: l}}}
      bad, _ -> {:halt, {:error, {:invalid_option, bad}}}
    end)
  end

  # ---------------------------------------------------------------------------------------
  # server: membership, draining, failover

  @impl true
  def init(_opts) do
    defaults = %{weight: 1.0, replicas: 1, replication: :sync, cluster_nodes: []}

    {:ok, config} =
      merge_config(defaults, Application.get_env(:dspex_bridge, :ha, []) |> Enum.to_list())

    :persistent_term.put(@config_key, config)
    # The ownership table outlives a restart of this process (its sessions keep writing);
    # a new one is made only when the node's name changed (it became distributed).
    name = Atom.to_string(node())

    case :persistent_term.get(@table_key, nil) do
      {^name, _table} -> :ok
      _ -> :persistent_term.put(@table_key, {name, Native.ha_table_new(name)})
    end

    :ok = :net_kernel.monitor_nodes(true)
    for n <- config.cluster_nodes, n != node(), do: Node.connect(n)
    for n <- Node.list(), do: hello(n, config)
    members = %{node() => %{weight: config.weight, draining: false}}
    {:ok, %{members: members}}
  end

  defp hello(to, config) do
    owned = Directory.entries_owned_by(node())
    GenServer.cast({__MODULE__, to}, {:hello, node(), config.weight, owned})
  end

  @impl true
  def handle_call(:members, _from, state), do: {:reply, state.members, state}

  def handle_call(:eligible, _from, state),
    do: {:reply, state |> eligible() |> Enum.map(&elem(&1, 0)), state}

  def handle_call(:eligible_weighted, _from, state), do: {:reply, eligible(state), state}

  def handle_call({:configure, config}, _from, state) do
    :persistent_term.put(@config_key, config)
    for n <- Node.list(), do: hello(n, config)
    {:reply, :ok, put_in(state.members[node()].weight, config.weight)}
  end

  def handle_call({:owner, id, owner, epoch, replicas}, _from, state) do
    Directory.learn(id, owner, epoch, replicas)
    {:reply, :ok, state}
  end

  def handle_call({:replica_snapshot, id, owner, epoch, seq, envelope}, _from, state),
    do: {:reply, Replication.store_snapshot(id, owner, epoch, seq, envelope), state}

  def handle_call({:replica_op, id, owner, epoch, seq, op}, _from, state),
    do: {:reply, Replication.store_op(id, owner, epoch, seq, op), state}

  defp eligible(state) do
    for {n, %{weight: w, draining: false}} <- state.members, w > 0, do: {n, w}
  end

  @impl true
  def handle_cast({:hello, from, weight, owned}, state) do
    known? = Map.has_key?(state.members, from)
    draining = get_in(state.members, [from, :draining]) || false
    state = put_in(state.members[from], %{weight: weight, draining: draining})
    for {id, owner, epoch, replicas} <- owned, do: Directory.learn(id, owner, epoch, replicas)
    unless known?, do: hello(from, config())
    {:noreply, state}
  end

  def handle_cast({:forget, id}, state) do
    Directory.forget(id)
    {:noreply, state}
  end

  def handle_cast({:draining, node, flag}, state) do
    state =
      if Map.has_key?(state.members, node),
        do: put_in(state.members[node].draining, flag),
        else: state

    if node == node() and flag, do: drain(state)
    {:noreply, state}
  end

  def handle_cast({:replica_op, id, owner, epoch, seq, op}, state) do
    Replication.store_op(id, owner, epoch, seq, op)
    {:noreply, state}
  end

  # A replica of a session owned here missed a write: its session sends it a snapshot.
  def handle_cast({:resync, id, replica}, state) do
    case local_session(id) do
      {:ok, pid} -> send(pid, {:ha_resync, replica})
      _ -> :ok
    end

    {:noreply, state}
  end

  # Migrations run outside this process: they call back into it (eligibility, replicas).
  defp drain(state) do
    targets = for {n, w} <- eligible(state), n != node(), do: {n, w}
    owned = Directory.owned_by(node())
    emit(:drain_started, %{sessions: length(owned)}, %{node: node()})

    Task.start(fn ->
      for id <- owned do
        case targets |> rank(key(id)) |> List.first() do
          nil -> :ok
          target -> migrate_session(id, target)
        end
      end

      emit(:drain_completed, %{sessions: length(owned)}, %{node: node()})
    end)
  end

  @impl true
  def handle_info({:nodeup, n}, state) do
    hello(n, config())
    {:noreply, state}
  end

  def handle_info({:nodedown, n}, state) do
    state = %{state | members: Map.delete(state.members, n)}
    emit(:node_down, %{}, %{node: n})
    live = for {m, _} <- eligible(state), do: m
    # Promotion calls back into this process (placement), so it runs beside it.
    Task.start(fn -> Replication.failover(n, live) end)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}
end
