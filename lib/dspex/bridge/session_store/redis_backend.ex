defmodule DSPex.Bridge.SessionStore.RedisBackend do
  @moduledoc """
  Sessions on Redis: the `:redis` backend of `DSPex.Bridge.SessionStore`.

  A session created with `backend: :redis` (or on a node whose default is Redis) lives in
  the Redis server, not in this node: every node that runs this backend against the same
  server sees it, with no HAManager, and it outlives every node. You keep calling
  `DSPex.Bridge.SessionStore`; its functions find the session here (this module implements
  `DSPex.Bridge.SessionStore.Backend`).

  * Every change is one server-side script, so its checks and its write are atomic across
    nodes: versions grow by exactly one, `expected_version:` conflicts are
    `{:error, {:version_mismatch, current}}` as on the local backend, `update_variables/3`
    is all or nothing. A write returns only after Redis acknowledged it.
  * Values are validated against the variable's type and constraints on the calling node
    before the script runs; the script refuses the write if the variable was re-registered
    meanwhile (its registration generation changed), and the node then validates again.
  * Sessions expire in Redis when idle for their TTL (reads and writes refresh it; reads
    served from the cache refresh it every half TTL at least).
  * When Redis cannot be reached, calls return `{:error, :backend_unavailable}`; nothing is
    half-written (each change is one script).
  * Reads are cached on each node: a repeated `get_variable/3` of the session's owner is
    served from ETS, with no round trip, and is never stale once a write made on any node
    has returned. A cached copy is served only under a read lease the server knows of, and
    a change returns only after every node holding a lease on its session dropped its
    copies, or that lease ran out (`read_cache_lease_ms:`, default 1,000). So a write to a
    session that a dead or cut-off node was reading can take up to that long; a session
    nobody caches pays nothing for it.

  * Watchers on every node get each change through Redis pub/sub, in the same messages
    as on the local backend (`{:dspex_variable_changed, ...}`, `{:dspex_variable_deleted,
    ...}`); when the server goes away their watch ends with `{:dspex_watch_lost, session,
    name, :backend_unavailable}`. The expiry of an idle session is not announced.

  * Optimizer locks (`DSPex.Bridge.OptimizerCoordinator` with `session_id:` a Redis
    session) live on the server and exclude holders on every node: each grant takes the
    next value of a per-variable counter as its fencing token; the write script refuses a
    write to a locked variable without the holder's token, and any token whose lock is no
    longer held (a paused holder whose lease ran out). Waiters are served by priority, then
    first come first served, across nodes; a dead holder's lock goes to the next waiter at
    once (its node's monitor), and a dead node's locks when their lease runs out.
    `conflict_resolution: :preempt` with a higher priority than the holder's has the
    holder's node send it `{:optimization_preempted, var, info}` and, after `grace_ms:`,
    `{:lock_lost, var, :preempted, held_ms}` as it gives the lock to the first waiter (a
    holder whose node is gone loses it with its lease). Optimization runs are not on
    Redis yet.

  * `export_session/2` takes one consistent cut in one script and writes the local
    backend's snapshot format; `import_session(binary, backend: :redis)` stores a snapshot
    in one script. So a session moves between the backends either way.

  * Dependency edges (`DSPex.Bridge.DependencyManager`) are checked for cycles by the
    script that adds them, against the graph as it is on the server, so two nodes adding
    edges at once can never close a cycle together; every change bumps a graph version.

  * Access policies (`access_mode:`, `access_rules:`, `DSPex.Bridge.AccessControl`'s
    changes) are stored once, with a version; each node decides in its own ACL engine on a
    copy it reloads whenever the version read with the value differs, and a write by
    another session carries the version it was allowed on, which its script checks. No
    allow outlives a policy change, on any node. Other sessions may read, list, see the
    history of and write variables their policy grants; everything else is the owner's.

  Not yet on this backend (they return `{:error, {:not_supported, what}}`): computed
  variables (and so propagation).

  ## Starting it

      # config/runtime.exs: every node's default backend, started with the application
      config :dspex_bridge, backend: {:redis, url: "redis://127.0.0.1:6379/0", password: "..."}

      # or in your supervision tree, and per session:
      children = [{DSPex.Bridge.SessionStore.RedisBackend, url: "redis://10.0.0.5:6379/0"}]
      DSPex.Bridge.SessionStore.create_session("s1", backend: :redis)

  Options: `url:` (required; `rediss://` for TLS), `password:`, `username:`, `timeout:` ms
  per call (default 5,000), `tls_ca_file:`, `tls_cert_file:`, `tls_key_file:` (see
  `DSPex.Bridge.Redis.connect/2`), `prefix:` for the keys (default `"dspex:"`),
  `read_cache_lease_ms:` (default
  1,000, at most 60,000; `0` turns the read cache off).
  """

  use GenServer
  @behaviour DSPex.Bridge.SessionStore.Backend

  alias DSPex.Bridge.{AccessControl, CircuitBreaker, Options, Redis, Variable, VariableType}
  alias DSPex.Bridge.SessionStore.RedisBackend.{Access, Graph, Locks, ReadCache, Scripts}
  alias DSPex.Bridge.SessionStore.RedisBackend.Watchers

  @default_prefix "dspex:"
  @default_lease_ms 1_000
  # A write whose variable was re-registered between validation and script is validated
  # again; more attempts than this means something keeps re-registering it.
  @stale_retries 3

  # In front of the server: after a few calls that could not reach it, calls fail at once
  # for a while instead of each waiting for a dial; one probe at a time tells when it is back.
  @breaker :dspex_redis_backend
  @breaker_opts [
    failure_threshold: 3,
    open_timeout_ms: 500,
    max_open_timeout_ms: 5_000,
    half_open_calls: 1
  ]

  @start_opts %{
    url: &is_binary/1,
    password: &is_binary/1,
    username: &is_binary/1,
    timeout: &Options.pos_ms?/1,
    prefix: &is_binary/1,
    tls_ca_file: &is_binary/1,
    tls_cert_file: &is_binary/1,
    tls_key_file: &is_binary/1,
    read_cache_lease_ms: &__MODULE__.lease_ms?/1
  }

  @typedoc "A running backend, as this node sees it."
  @type t :: %{
          conn: Redis.t(),
          prefix: binary(),
          schemas: :ets.tid(),
          node_id: binary(),
          cache: ReadCache.t(),
          lease_ms: non_neg_integer()
        }

  # ---------------------------------------------------------------------------------------
  # the process: it connects at start (a wrong password or a server that is not there is an
  # error here) and publishes the connection for the callers.

  @doc false
  def child_spec(opts), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @doc "Starts the backend. See the module doc for the options."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    with {:ok, o} <- Options.take(opts, @start_opts),
         {:ok, url} <- Map.fetch(o, :url) |> required(:url) do
      GenServer.start_link(__MODULE__, Map.put(o, :url, url), name: __MODULE__)
    end
  end

  @doc false
  # A read lease: off (0), or up to a minute (a dead node's lease holds writes back).
  def lease_ms?(t), do: Options.int_in?(t, 0, 60_000)

  defp required({:ok, v}, _key), do: {:ok, v}
  defp required(:error, key), do: {:error, {:invalid_option, {:missing, key}}}

  @impl true
  def init(o) do
    # terminate/2 must run on shutdown: it unpublishes the backend.
    Process.flag(:trap_exit, true)

    connect_opts =
      Map.take(o, [:password, :username, :timeout, :tls_ca_file, :tls_cert_file, :tls_key_file])
      |> Map.to_list()

    with {:ok, conn} <- Redis.connect(o.url, connect_opts),
         :ok <- CircuitBreaker.start_breaker(@breaker, @breaker_opts) do
      # Registration generations of the variables this node has seen: a schema is fixed
      # at registration, so it is cached until the server says it was replaced. Also the
      # sessions found on the server ({:session, id}, see located/3).
      schemas = :ets.new(:dspex_redis_schemas, [:public, read_concurrency: true])
      # This node's id on the server: its lock waiters, its read leases, its channel.
      node_id = Base.encode16(:crypto.strong_rand_bytes(8), case: :lower)

      backend = %{
        conn: conn,
        prefix: Map.get(o, :prefix, @default_prefix),
        schemas: schemas,
        node_id: node_id,
        cache: ReadCache.new(),
        lease_ms: Map.get(o, :read_cache_lease_ms, @default_lease_ms)
      }

      :persistent_term.put(__MODULE__, backend)

      {:ok,
       %{
         backend: backend,
         url: o.url,
         connect_opts: connect_opts,
         sub: nil,
         channels: %{},
         watchers: Watchers.new(),
         grants: nil,
         locks: Locks.new(node_id),
         # session -> monotonic ms until which its channel stays subscribed for the cache
         cached: %{},
         redial_ms: nil
       }, {:continue, :subscribe}}
    else
      {:error, reason} -> {:stop, {:redis_connect_failed, reason}}
    end
  end

  # This node's channel, before any change of ours can wait for acknowledgements on it.
  @impl true
  def handle_continue(:subscribe, state), do: {:noreply, redialed(state)}

  @impl true
  def terminate(_reason, state) do
    :persistent_term.erase(__MODULE__)
    CircuitBreaker.delete_breaker(@breaker)
    if state.sub, do: Redis.close_subscriber(state.sub)
    :ok
  end

  # Watches: this process holds the node's subscriber connection and subscribes a
  # session's channel while anyone on this node watches one of its variables.

  @impl true
  def handle_call({:watch, id, name, pid}, _from, state) do
    with {:ok, state} <- subscribed(state, id),
         {:ok, [var]} <- read(state.backend, id, [name]) do
      watchers = Watchers.add(state.watchers, id, name, pid, var.version)
      {:reply, {:ok, var}, %{state | watchers: watchers}}
    else
      {:error, reason, state} -> {:reply, {:error, reason}, unsubscribe_unwatched(state)}
      {:error, reason} -> {:reply, {:error, reason}, unsubscribe_unwatched(state)}
    end
  end

  # A lock acquire made in a caller was queued: the wait is kept here.
  def handle_call({:lock_wait, member, entry, pttl, deadline}, from, state) do
    {:ok, state} = subscribed_grants(state)

    case Locks.wait(state.locks, member, entry, from, pttl, deadline) do
      {:reply, reply, locks} -> {:reply, reply, %{state | locks: locks}}
      {:noreply, locks} -> {:noreply, %{state | locks: locks}}
    end
  end

  def handle_call({:unwatch, id, name, pid}, _from, state) do
    state = %{state | watchers: Watchers.remove(state.watchers, id, name, pid)}
    {:reply, :ok, unsubscribe_unwatched(state)}
  end

  # A reader is about to take a read lease on `id`: its channel is subscribed first, and
  # stays so for a few leases (renewed by later readers).
  def handle_call({:cache_subscribe, id}, _from, state) do
    with {:ok, state} <- subscribed(state, id),
         {:ok, state} <- subscribed_grants(state) do
      until = ReadCache.now() + 4 * state.backend.lease_ms
      ReadCache.subscribed(state.backend.cache, id, until)

      unless Map.has_key?(state.cached, id),
        do: Process.send_after(self(), {:cache_check, id}, 4 * state.backend.lease_ms)

      {:reply, :ok, %{state | cached: Map.put(state.cached, id, until)}}
    else
      {:error, reason, state} -> {:reply, {:error, reason}, state}
    end
  end

  @impl true
  def handle_cast({:lock_released, id, var, who}, state),
    do: {:noreply, %{state | locks: Locks.released(state.locks, id, var, who)}}

  def handle_cast({:lock_expect, member, entry, timeout}, state),
    do:
      {:noreply, %{state | locks: Locks.expect(state.locks, state.backend, member, entry, timeout)}}

  def handle_cast({:lock_granted, member}, state),
    do: {:noreply, %{state | locks: Locks.granted_here(state.locks, member)}}

  def handle_cast({:lock_unexpect, member}, state),
    do: {:noreply, %{state | locks: Locks.unexpect(state.locks, member)}}

  @impl true
  def handle_info(
        {:dspex_redis_message, sub, channel, "a|" <> ack},
        %{sub: sub, grants: channel} = state
      ) do
    ReadCache.acknowledged(ack)
    {:noreply, state}
  end

  def handle_info(
        {:dspex_redis_message, sub, channel, payload},
        %{sub: sub, grants: channel} = state
      ),
      do: {:noreply, %{state | locks: Locks.published(state.locks, payload)}}

  def handle_info({:dspex_redis_message, sub, channel, payload}, %{sub: sub} = state)
      when is_binary(channel) do
    case state.channels do
      %{^channel => id} ->
        drop_copies(state, id, payload)
        state = %{state | watchers: Watchers.deliver(state.watchers, id, payload)}
        {:noreply, unsubscribe_unwatched(state)}

      _ ->
        {:noreply, state}
    end
  end

  # The subscriber connection ended (the server went away): every watch here is lost, the
  # cached copies go (changes may be missed from now on), and a new connection is dialled
  # for this node's channel; the next watch or cached read subscribes its session again.
  def handle_info({:dspex_redis_message, sub, :closed}, %{sub: sub} = state) do
    watchers = Watchers.lose_all(state.watchers, :backend_unavailable)
    ReadCache.clear(state.backend.cache)
    state = %{state | sub: nil, channels: %{}, watchers: watchers, grants: nil, cached: %{}}
    {:noreply, redial_later(state)}
  end

  def handle_info(:redial, state), do: {:noreply, redialed(%{state | redial_ms: nil})}

  # A session read from the cache no more: its channel goes unless it is watched.
  def handle_info({:cache_check, id}, state) do
    case state.cached do
      %{^id => until} ->
        left = until - ReadCache.now()

        if left > 0 do
          Process.send_after(self(), {:cache_check, id}, left)
          {:noreply, state}
        else
          ReadCache.forget(state.backend.cache, id)
          {:noreply, unsubscribe_unwatched(%{state | cached: Map.delete(state.cached, id)})}
        end

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:lock_preempt_due, member}, state),
    do: {:noreply, %{state | locks: Locks.preempt_due(state.locks, state.backend, member)}}

  def handle_info({:lock_timeout, member}, state),
    do: {:noreply, %{state | locks: Locks.timed_out(state.locks, state.backend, member)}}

  # Waiters left without a grant (their holder's lease ran out, or the grant's message was
  # lost with a subscriber connection) ask again.
  def handle_info({:lock_poke, member}, state) do
    {:ok, state} = subscribed_grants(state)
    {:noreply, %{state | locks: Locks.poke(state.locks, state.backend, member)}}
  end

  def handle_info({:DOWN, ref, :process, pid, _reason}, state) do
    locks = Locks.down(state.locks, state.backend, ref)
    state = %{state | watchers: Watchers.down(state.watchers, pid), locks: locks}
    {:noreply, unsubscribe_unwatched(state)}
  end

  # Late confirmations, and messages of an old subscriber connection.
  def handle_info(_other, state), do: {:noreply, state}

  defp subscribed(%{sub: nil} = state, id) do
    with {:ok, state} <- ensure_sub(state), do: subscribed(state, id)
  end

  defp subscribed(state, id) do
    channel = channel(state.backend, id)

    if Map.has_key?(state.channels, channel) do
      {:ok, state}
    else
      case Redis.subscribe(state.sub, [channel]) do
        :ok -> {:ok, %{state | channels: Map.put(state.channels, channel, id)}}
        {:error, _} -> {:error, :backend_unavailable, state}
      end
    end
  end

  # This node's grants channel, subscribed before any lock wait starts. Without a
  # subscriber (Redis is away) waits still end: by poke or timeout.
  defp subscribed_grants(%{grants: channel} = state) when is_binary(channel), do: {:ok, state}

  defp subscribed_grants(state) do
    channel = Locks.grants_channel(state.backend, state.locks.node_id)

    with {:ok, state} <- ensure_sub(state),
         :ok <- Redis.subscribe(state.sub, [channel]) do
      {:ok, %{state | grants: channel}}
    else
      _ -> {:ok, state}
    end
  end

  defp ensure_sub(%{sub: nil} = state) do
    case Redis.subscriber(state.url, state.connect_opts) do
      {:ok, sub} -> {:ok, %{state | sub: sub}}
      {:error, _} -> {:error, :backend_unavailable, state}
    end
  end

  defp ensure_sub(state), do: {:ok, state}

  defp unsubscribe_unwatched(state) do
    {gone, kept} =
      Enum.split_with(state.channels, fn {_channel, id} ->
        not Watchers.watched?(state.watchers, id) and not Map.has_key?(state.cached, id)
      end)

    if gone != [] and state.sub, do: Redis.unsubscribe(state.sub, Enum.map(gone, &elem(&1, 0)))
    %{state | channels: Map.new(kept)}
  end

  defp channel(backend, id), do: session_key(backend, id) <> ":changes"

  # Dials the subscriber connection and subscribes this node's channel; while the server
  # is away, again and again with a growing pause.
  defp redialed(state) do
    with {:ok, state} <- ensure_sub(state),
         {:ok, %{grants: channel} = state} when is_binary(channel) <- subscribed_grants(state) do
      state
    else
      {:error, _reason, state} -> redial_later(state)
      {:ok, state} -> redial_later(state)
    end
  end

  defp redial_later(state) do
    pause = min((state.redial_ms || 50) * 2, 2_000)
    Process.send_after(self(), :redial, pause)
    %{state | redial_ms: pause}
  end

  # A change published on a session this node caches: its copies go (a new epoch), then the
  # writer on another node learns it may return.
  defp drop_copies(state, id, payload) do
    header = Watchers.netstrings(payload, 3)

    with %{^id => _} <- state.cached,
         [_kind, writer, tag] when writer != state.backend.node_id <- header do
      ReadCache.invalidate(state.backend.cache, id)
      ReadCache.acknowledge(state.backend, writer, tag)
    end

    if match?(["x" | _], header), do: ReadCache.forget(state.backend.cache, id)
  end

  @doc false
  # OptimizerCoordinator's calls for a Redis session (options already checked), in the
  # caller (see Locks).
  def acquire_lock(backend, id, var, optimizer, pid, o),
    do: Locks.acquire(backend, {id, var, optimizer, pid, o})

  @doc false
  def release_lock(backend, id, var, optimizer), do: Locks.release(backend, id, var, optimizer)

  @doc false
  def renew_lock(backend, id, var, optimizer, lease_ms),
    do: Locks.renew(backend, id, var, optimizer, lease_ms)

  @doc false
  def lock_info(backend, id, var), do: Locks.info(backend, id, var)

  @impl DSPex.Bridge.SessionStore.Backend
  def watch(id, name, pid), do: backend_call({:watch, id, name, pid})

  @impl DSPex.Bridge.SessionStore.Backend
  def unwatch(id, name, pid), do: backend_call({:unwatch, id, name, pid})

  defp backend_call(request) do
    GenServer.call(__MODULE__, request, 15_000)
  catch
    :exit, _ -> {:error, :backend_unavailable}
  end

  @doc "This node's running backend, or nil. One per node: the server all nodes share."
  @spec lookup() :: t() | nil
  def lookup do
    backend = :persistent_term.get(__MODULE__, nil)
    # A backend killed without its terminate/2 must not linger.
    if backend && Process.whereis(__MODULE__), do: backend
  end

  # ---------------------------------------------------------------------------------------
  # the Backend behaviour: each callback finds this node's running backend

  @impl DSPex.Bridge.SessionStore.Backend
  def create_session(meta) do
    with {:ok, backend} <- running(),
         :ok <- DSPex.Bridge.SessionStore.absent_here(meta.id),
         {:ok, id} <- create_session(backend, meta) do
      event = [:dspex, :bridge, :session, :created]
      DSPex.Bridge.Events.emit(event, %{}, %{session_id: id, backend: :redis})
      {:ok, id}
    end
  end

  @impl DSPex.Bridge.SessionStore.Backend
  def import_session(meta, vars, histories, edges) do
    with {:ok, backend} <- running(),
         :ok <- DSPex.Bridge.SessionStore.absent_here(meta.id),
         do: import_session(backend, meta, vars, histories, edges)
  end

  @impl DSPex.Bridge.SessionStore.Backend
  def list_sessions do
    case lookup() do
      nil -> []
      backend -> list_sessions(backend)
    end
  end

  @impl DSPex.Bridge.SessionStore.Backend
  def export_session(id) do
    with {:ok, backend} <- running(),
         {:ok, meta, vars, histories, edges} <- export_session(backend, id),
         do: DSPex.Bridge.SessionStore.Codec.encode(meta, vars, histories, edges)
  end

  for {fun, arity} <- DSPex.Bridge.SessionStore.Backend.session_callbacks() do
    args = Macro.generate_arguments(arity, __MODULE__)

    @impl DSPex.Bridge.SessionStore.Backend
    def unquote(fun)(unquote_splicing(args)) do
      with {:ok, backend} <- running(), do: unquote(fun)(backend, unquote_splicing(args))
    end
  end

  @doc false
  # `{:ok, backend}` when one runs on this node.
  def running do
    case lookup() do
      nil -> {:error, {:backend_not_started, :redis}}
      backend -> {:ok, backend}
    end
  end

  # ---------------------------------------------------------------------------------------
  # sessions

  @doc false
  # `meta` is SessionStore's checked session settings.
  def create_session(backend, meta) do
    ttl = if meta.ttl == :infinity, do: "inf", else: meta.ttl

    args = [
      blob(Map.delete(meta, :core)),
      ttl,
      meta.history_limit,
      meta.max_variables
    ]

    case run(backend, Scripts.create(), meta.id, args) do
      {:ok, "ok"} -> {:ok, meta.id}
      {:ok, "exists"} -> {:error, {:session_exists, meta.id}}
      error -> error
    end
  end

  @doc false
  def delete_session(backend, id) do
    case change(backend, id, Scripts.delete(), []) do
      {:ok, ["ok"]} ->
        :ets.match_delete(backend.schemas, {{id, :_}, :_, :_})
        :ets.match_delete(backend.schemas, {{:policy, id, :_}, :_, :_})
        :ets.delete(backend.schemas, {:session, id})
        ReadCache.forget(backend.cache, id)
        DSPex.Bridge.Native.acl_remove_session(id)
        :ok

      error ->
        error
    end
  end

  @doc false
  def get_session(backend, id) do
    with {:ok, [meta, count]} <- run(backend, Scripts.session(), id, []),
         {:ok, meta} <- unblob(meta) do
      {:ok, Map.put(meta, :variable_count, String.to_integer(count))}
    end
  end

  @doc false
  # `{:ok, true | false}`, or the error that kept it from knowing.
  # A session found once is remembered (unless `cached` is false): its backend never
  # changes, and a later call on it after its deletion still learns `:session_not_found`
  # from the server.
  def located(backend, id, cached \\ true) do
    if cached and :ets.member(backend.schemas, {:session, id}) do
      {:ok, true}
    else
      case get_session(backend, id) do
        {:ok, _} ->
          :ets.insert(backend.schemas, {{:session, id}, 0, nil})
          {:ok, true}

        {:error, :session_not_found} ->
          {:ok, false}

        error ->
          error
      end
    end
  end

  @doc false
  def list_sessions(backend) do
    case Redis.eval(backend.conn, Scripts.sessions(), [index_key(backend)], []) do
      {:ok, ids} -> Enum.map(ids, &decode_id/1)
      {:error, _} -> []
    end
  end

  # ---------------------------------------------------------------------------------------
  # variables

  @doc false
  # `opts` is SessionStore's checked options map.
  def register_variable(backend, id, name, type, value, opts) do
    now = System.system_time(:millisecond)

    with :ok <- supported(opts),
         {:ok, policy} <- initial_policy(id, name, opts),
         {:ok, constraints} <- VariableType.normalize_constraints(type, opts[:constraints] || %{}),
         {:ok, stored} <- VariableType.validate(type, value, constraints) do
      schema = %{
        type: type,
        constraints: constraints,
        description: opts[:description],
        created_at: now
      }

      metadata = opts[:metadata] || %{}

      args = [
        encode_id(name),
        blob(schema),
        blob(metadata),
        blob({stored, now}),
        blob({stored, now, :register}),
        policy
      ]

      case run(backend, Scripts.register(), id, args) do
        {:ok, ["ok", gen]} ->
          :ets.insert(backend.schemas, {{id, name}, gen, schema})
          {:ok, variable(id, name, schema, metadata, stored, now, 1)}

        {:ok, "exists"} ->
          {:error, {:variable_exists, name}}

        {:ok, ["limit", max]} ->
          {:error, {:too_many_variables, String.to_integer(max)}}

        error ->
          error
      end
    end
  end

  defp supported(opts) do
    if opts[:compute] != nil, do: {:error, {:not_supported, :compute}}, else: :ok
  end

  # The stored policy ('' for the default: private, no rules), checked by the ACL engine.
  defp initial_policy(id, name, opts) do
    mode = Map.get(opts, :access_mode, :private)

    with {:ok, rules} <- AccessControl.normalize_rules(Map.get(opts, :access_rules, [])) do
      if mode == :private and rules == [] do
        {:ok, ""}
      else
        with :ok <- Access.validate(id, name, mode, rules), do: {:ok, blob({mode, rules})}
      end
    end
  end

  @doc false
  # From this node's cache when it holds a copy (see ReadCache), else read from the server
  # under a read lease.
  def get_variable(%{lease_ms: 0} = backend, id, name), do: read_one(backend, id, name)

  def get_variable(backend, id, name) do
    case ReadCache.fetch(backend.cache, id, name) do
      {:ok, var} -> {:ok, var}
      :miss -> read_leased(backend, id, name)
    end
  end

  defp read_one(backend, id, name) do
    case read(backend, id, [name]) do
      {:ok, [var]} -> {:ok, var}
      error -> error
    end
  end

  defp read_leased(backend, id, name) do
    lease = backend.lease_ms

    if ReadCache.subscribed?(backend.cache, id, ReadCache.now() + lease) or cache_subscribe(id) do
      epoch = ReadCache.epoch(backend.cache, id)
      t0 = :erlang.monotonic_time()
      args = [backend.node_id, lease, encode_id(name)]

      with {:ok, [ttl, [row]]} <- run(backend, Scripts.read_cached(), id, args),
           {:ok, var} <- row_variable(backend, id, name, row) do
        # Half a TTL at most: a session read from the cache is read from the server (and
        # so kept alive) at least twice per TTL.
        span = if ttl == "inf", do: lease, else: min(lease, div(String.to_integer(ttl), 2))
        valid_until = ReadCache.after_ms(t0, span - ReadCache.margin(lease))
        ReadCache.put(backend.cache, id, name, var, epoch, valid_until)
        {:ok, var}
      end
    else
      read_one(backend, id, name)
    end
  end

  defp cache_subscribe(id) do
    GenServer.call(__MODULE__, {:cache_subscribe, id}, 15_000) == :ok
  catch
    :exit, _ -> false
  end

  # The named variables, one round trip; refreshes the schema cache on the way.
  defp read(backend, id, names) do
    with {:ok, rows} <- run(backend, Scripts.read(), id, Enum.map(names, &encode_id/1)) do
      names
      |> Enum.zip(rows)
      |> Options.map_ok(fn {name, row} -> row_variable(backend, id, name, row) end)
    end
  end

  @doc false
  # For a foreign caller's decision: `{:ok, [{name, {:ok, var} | {:error, _}, policy}]}`,
  # each policy `{mode, rules, version}` as read with the value, in one round trip.
  def read_with_policies(backend, id, names) do
    with {:ok, rows} <- run(backend, Scripts.read(), id, Enum.map(names, &encode_id/1)) do
      {:ok,
       names
       |> Enum.zip(rows)
       |> Enum.map(fn {name, row} ->
         {name, row_variable(backend, id, name, row), policy_of(Enum.drop(row, 5))}
       end)}
    end
  end

  defp policy_of([nil, _]), do: {:private, [], 0}

  defp policy_of([blob, version]),
    do: Tuple.append(:erlang.binary_to_term(blob), String.to_integer(version))

  defp policy_of(_), do: {:private, [], 0}

  defp row_variable(_backend, _id, name, [nil | _]), do: {:error, {:variable_not_found, name}}

  defp row_variable(backend, id, name, [schema, gen, metadata, value, version | _policy]) do
    with {:ok, schema} <- unblob(schema),
         {:ok, metadata} <- unblob(metadata),
         {:ok, {value, updated_at}} <- unblob(value) do
      :ets.insert(backend.schemas, {{id, name}, String.to_integer(gen), schema})
      {:ok, variable(id, name, schema, metadata, value, updated_at, String.to_integer(version))}
    end
  end

  @doc false
  def list_variables(backend, id) do
    with {:ok, flat} <- run(backend, Scripts.list(), id, []), do: variables_of(backend, id, flat)
  end

  # The variables of a session hash given as HGETALL's flat list, ordered by name.
  defp variables_of(backend, id, flat) do
    fields = pairs(flat)

    vars =
      for {"n:" <> f, version} <- fields do
        name = decode_id(f)
        row = [fields["s:" <> f], fields["g:" <> f], fields["m:" <> f], fields["v:" <> f], version]
        row = row ++ [fields["a:" <> f], fields["p:" <> f]]
        row_variable(backend, id, name, row)
      end

    with {:ok, vars} <- Options.map_ok(vars, & &1), do: {:ok, Enum.sort_by(vars, & &1.name)}
  end

  defp pairs(flat), do: flat |> Enum.chunk_every(2) |> Map.new(fn [k, v] -> {k, v} end)

  # ---------------------------------------------------------------------------------------
  # export / import: the local backend's snapshot format, so a session moves between them

  @doc false
  # `{:ok, meta, variables, histories, edges}` for SessionStore's codec, from one
  # consistent cut.
  def export_session(backend, id) do
    with {:ok, [main, hist, graph]} <- run(backend, Scripts.export(), id, []),
         {:ok, meta} <- unblob(pairs(main)["meta"]),
         {:ok, vars} <- variables_of(backend, id, main),
         {:ok, histories} <- histories_of(vars, pairs(hist)) do
      {:ok, Map.put(meta, :access, []), vars, histories, Graph.edges_of(graph)}
    end
  end

  defp histories_of(vars, fields) do
    Options.map_ok(vars, fn var ->
      f = encode_id(var.name)

      entries =
        for v <- var.version..1//-1, entry = fields["#{v}:" <> f], entry != nil do
          {:ok, {value, at, change}} = unblob(entry)
          %{version: v, value: value, updated_at: at, change: change}
        end

      {:ok, {var.name, entries}}
    end)
  end

  @doc false
  # A decoded snapshot (SessionStore's codec checked it) as a new Redis session.
  def import_session(backend, meta, vars, histories, edges) do
    cond do
      Enum.any?(vars, &(&1.compute != nil)) ->
        {:error, {:not_supported, :compute}}

      not Enum.all?(Map.get(meta, :access, []), &match?({_, :private, []}, &1)) ->
        {:error, {:not_supported, :access_rules}}

      true ->
        import_checked(backend, meta, vars, Map.new(histories), edges)
    end
  end

  defp import_checked(backend, meta, vars, histories, edges) do
    ttl = if meta.ttl == :infinity, do: "inf", else: meta.ttl
    stored = Map.drop(meta, [:core, :access])

    per_var =
      Enum.flat_map(vars, fn var ->
        schema = Map.take(var, [:type, :constraints, :description, :created_at])
        entries = Map.get(histories, var.name, [])

        [
          encode_id(var.name),
          blob(schema),
          blob(var.metadata),
          blob({var.value, var.updated_at}),
          var.version,
          length(entries)
        ] ++ Enum.flat_map(entries, &[&1.version, blob({&1.value, &1.updated_at, &1.change})])
      end)

    per_edge =
      Enum.flat_map(edges, fn {from, to, kind} -> [encode_id(from), encode_id(to), blob(kind)] end)

    args =
      [blob(stored), ttl, meta.history_limit, meta.max_variables, length(vars)] ++
        per_var ++ [length(edges) | per_edge]

    case run(backend, Scripts.import(), meta.id, args) do
      {:ok, "ok"} -> {:ok, meta.id}
      {:ok, "exists"} -> {:error, {:session_exists, meta.id}}
      error -> error
    end
  end

  @doc false
  # `updates` is a checked list of `{name, value}`; opts holds `expected_versions`,
  # `metadata`, `lock_tokens`. A single update reports its error as is.
  def update_variables(backend, id, updates, opts, change \\ :update),
    do: update(backend, id, updates, opts, change, @stale_retries)

  defp update(backend, id, updates, opts, change, retries) do
    updates
    |> attempt(backend, id, opts, change, retries)
    |> tag_error(updates)
  end

  defp attempt(updates, backend, id, opts, change, retries) do
    names = Enum.map(updates, &elem(&1, 0))

    tokens = Map.get(opts, :lock_tokens, %{})
    policy_versions = Map.get(opts, :policy_versions, %{})

    with :ok <- no_duplicates(updates),
         {:ok, schemas} <- schemas(backend, id, names),
         {:ok, writes} <- prepare(updates, schemas, opts, change),
         {:ok, metadata} <- merged_metadata(backend, id, names, opts[:metadata] || %{}) do
      now = System.system_time(:millisecond)

      args =
        [length(writes)] ++
          Enum.flat_map(writes, fn {name, gen, expected, stored, _schema} ->
            [
              encode_id(name),
              gen,
              expected,
              blob({stored, now}),
              Map.get(metadata, name, ""),
              blob({stored, now, change}),
              Map.get(tokens, name, ""),
              Map.get(policy_versions, name, "")
            ]
          end)

      case change(backend, id, Scripts.write(), args) do
        {:ok, ["ok" | results]} ->
          {:ok, Enum.zip_with(writes, results, &written(id, &1, &2, now))}

        {:ok, ["stale", i, _]} when retries > 0 ->
          {name, _, _, _, _} = Enum.at(writes, i - 1)
          :ets.delete(backend.schemas, {id, name})
          attempt(updates, backend, id, opts, change, retries - 1)

        {:ok, [reason, i, detail]} ->
          {name, _, _, _, _} = Enum.at(writes, i - 1)
          {:error, {name, script_error(reason, name, detail)}}

        error ->
          error
      end
    end
  end

  defp written(id, {name, _gen, _expected, stored, schema}, [version, metadata], now) do
    {:ok, metadata} = unblob(metadata)
    variable(id, name, schema, metadata, stored, now, version)
  end

  defp script_error("missing", name, _), do: {:variable_not_found, name}
  defp script_error("stale", name, _), do: {:variable_replaced, name}
  defp script_error("mismatch", _name, current), do: {:version_mismatch, String.to_integer(current)}
  defp script_error("stale_token", _name, _), do: :stale_token
  defp script_error("policy_changed", _name, _), do: :policy_changed
  defp script_error("locked", _name, who), do: {:locked_by, :erlang.binary_to_term(who)}

  # A write with `metadata:` merges it into the current metadata, read first: name ->
  # the merged blob. (Two nodes merging metadata into one variable at once may lose one
  # merge; values and versions are exact.)
  defp merged_metadata(_backend, _id, _names, metadata) when metadata == %{}, do: {:ok, %{}}

  defp merged_metadata(backend, id, names, metadata) do
    with {:ok, vars} <- read_tagged(backend, id, names),
         do: {:ok, Map.new(vars, &{&1.name, blob(Map.merge(&1.metadata, metadata))})}
  end

  defp no_duplicates(updates) do
    updates
    |> Enum.reduce_while(%{}, fn {name, _}, seen ->
      if Map.has_key?(seen, name),
        do: {:halt, {:error, {name, {:duplicate_variable, name}}}},
        else: {:cont, Map.put(seen, name, true)}
    end)
    |> case do
      {:error, _} = error -> error
      _ -> :ok
    end
  end

  defp prepare(updates, schemas, opts, change) do
    expected = Map.get(opts, :expected_versions, %{})

    Options.map_ok(updates, fn {name, value} ->
      {gen, schema} = Map.fetch!(schemas, name)

      case VariableType.validate(schema.type, value, schema.constraints) do
        {:ok, stored} ->
          exp = if change == :update, do: Map.get(expected, name, ""), else: ""
          {:ok, {name, gen, exp, stored, schema}}

        {:error, reason} ->
          {:error, {name, reason}}
      end
    end)
  end

  # The schemas of `names`: from the cache, the rest from the server in one read.
  defp schemas(backend, id, names) do
    {cached, missing} =
      Enum.reduce(names, {%{}, []}, fn name, {cached, missing} ->
        case :ets.lookup(backend.schemas, {id, name}) do
          [{_, gen, schema}] -> {Map.put(cached, name, {gen, schema}), missing}
          [] -> {cached, [name | missing]}
        end
      end)

    if missing == [] do
      {:ok, cached}
    else
      with {:ok, _vars} <- read_tagged(backend, id, Enum.reverse(missing)) do
        schemas(backend, id, names)
      end
    end
  end

  defp read_tagged(backend, id, names) do
    case read(backend, id, names) do
      {:error, {:variable_not_found, name}} -> {:error, {name, {:variable_not_found, name}}}
      other -> other
    end
  end

  # A batch names the failing variable; a single update does not.
  defp tag_error({:error, {name, reason}}, [{name, _}]), do: {:error, reason}
  defp tag_error(result, _updates), do: result

  @doc false
  # Its edges go with it, in the same script.
  def delete_variable(backend, id, name) do
    case change(backend, id, Scripts.delete_variable(), [encode_id(name)]) do
      {:ok, ["ok"]} ->
        :ets.delete(backend.schemas, {id, name})
        :ok

      {:ok, "missing"} ->
        {:error, {:variable_not_found, name}}

      error ->
        error
    end
  end

  @doc false
  def get_history(backend, id, name, limit \\ 1_000_000) do
    case run(backend, Scripts.history(), id, [encode_id(name), limit]) do
      {:ok, [version, entries]} ->
        entries
        |> Enum.with_index()
        |> Enum.reject(fn {entry, _} -> is_nil(entry) end)
        |> Options.map_ok(fn {entry, i} ->
          with {:ok, {value, at, change}} <- unblob(entry),
               do: {:ok, %{version: version - i, value: value, updated_at: at, change: change}}
        end)

      {:ok, "missing"} ->
        {:error, {:variable_not_found, name}}

      error ->
        error
    end
  end

  @doc false
  def rollback_variable(backend, id, name, version) do
    with {:ok, entries} <- get_history(backend, id, name),
         {:ok, entry} <- find_version(entries, version) do
      case update_variables(backend, id, [{name, entry.value}], %{}, {:rollback, version}) do
        {:ok, [var]} -> {:ok, var}
        error -> error
      end
    end
  end

  defp find_version(entries, version) do
    case Enum.find(entries, &(&1.version == version)) do
      nil -> {:error, {:version_not_found, version}}
      entry -> {:ok, entry}
    end
  end

  # ---------------------------------------------------------------------------------------
  # encoding

  defp variable(id, name, schema, metadata, value, updated_at, version) do
    %Variable{
      session_id: id,
      name: name,
      type: schema.type,
      value: value,
      version: version,
      created_at: schema.created_at,
      updated_at: updated_at,
      constraints: schema.constraints,
      metadata: metadata,
      description: schema.description
    }
  end

  # Ids in keys and fields: an atom and a string of the same text are different ids.
  @doc false
  def encode_id(id) when is_atom(id), do: "a" <> Atom.to_string(id)
  def encode_id(id) when is_binary(id), do: "s" <> id

  @doc false
  # An atom id comes back only if the atom exists on this node (a caller named it here).
  def decode_id("a" <> text) do
    String.to_existing_atom(text)
  rescue
    ArgumentError -> text
  end

  def decode_id("s" <> text), do: text

  defp blob(term), do: :erlang.term_to_binary(term)

  # Not `[:safe]`: the server is trusted like a database, and a node must read what
  # another stored although no code of its own has made an atom in it yet (a value of a
  # `:choice`, a metadata key). Nothing from outside the VM (Python) can store an atom.
  defp unblob(binary) when is_binary(binary) do
    {:ok, :erlang.binary_to_term(binary)}
  rescue
    ArgumentError -> {:error, {:backend_corrupt, :undecodable}}
  end

  defp unblob(other), do: {:error, {:backend_corrupt, other}}

  defp session_key(backend, id), do: backend.prefix <> "{" <> encode_id(id) <> "}"
  defp index_key(backend), do: backend.prefix <> "sessions"

  # Runs a session script: ARGV is the session id, then `args`.
  defp run(backend, script, id, args) do
    key = session_key(backend, id)
    keys = [key, key <> ":h", index_key(backend)]
    run_script(backend, script, keys, [encode_id(id) | args])
  end

  # Runs a script that changes variables of the session: it returns once every other node
  # that caches the session dropped its copies, or its read lease ran out (see ReadCache).
  # The script gets this node's id and a tag (a process alias) to be acknowledged with.
  defp change(backend, id, script, args) do
    tag = :erlang.alias()

    try do
      result = run(backend, script, id, args ++ [backend.node_id, :erlang.term_to_binary(tag)])
      # Whatever the outcome (a timeout may hide a done change), no copy here outlives it.
      ReadCache.invalidate(backend.cache, id)

      case result do
        {:ok, ["ok", cachers | rest]} ->
          ReadCache.await_acknowledgements(tag, cachers)
          {:ok, ["ok" | rest]}

        other ->
          other
      end
    after
      :erlang.unalias(tag)
      ReadCache.flush_acknowledgements(tag)
    end
  end

  @doc false
  # A session script for the modules beside this one (Graph).
  def run_session_script(backend, script, id, args), do: run(backend, script, id, args)

  @doc false
  # The keys of a variable's lock (see LockScripts).
  def lock_keys(backend, id, var) do
    key = session_key(backend, id)
    f = encode_id(var)
    [key, key <> ":lock:" <> f, key <> ":fence:" <> f, key <> ":q:" <> f, key <> ":qi:" <> f]
  end

  @doc false
  # Any script, through the breaker.
  def run_script(backend, script, keys, args) do
    call = fn -> backend.conn |> Redis.eval(script, keys, args) |> result() end

    case CircuitBreaker.call(@breaker, call, classify: &classify/1) do
      {:error, :circuit_open} -> {:error, :backend_unavailable}
      result -> result
    end
  end

  defp result({:ok, "no_session"}), do: {:error, :session_not_found}
  defp result({:ok, _} = ok), do: ok
  defp result({:error, {:unavailable, _}}), do: {:error, :backend_unavailable}
  defp result({:error, :timeout}), do: {:error, :backend_unavailable}
  defp result({:error, reason}), do: {:error, {:backend_error, reason}}

  # Only an unreachable server counts against the breaker; refusals are answers.
  defp classify({:error, :backend_unavailable}), do: :failure
  defp classify(_), do: :success
end
