defmodule DSPex.Bridge.SessionStore.RedisBackend.ReadCache do
  @moduledoc false
  # This node's copies of Redis variables, so that a repeated `get_variable/3` is served
  # from ETS, and never stale once a write made on any node has returned.
  #
  # Invalidations that merely follow a write (Redis's client tracking, or our pub/sub
  # messages) can reach a reader after the writer was told its write is done; so a copy is
  # served only under a read lease the server knows of, and a change is done only when
  # every node holding a live lease on its session acknowledged it, or that lease ran out:
  #
  # * A miss reads the variable with `read_cached`, which gives this node a lease on the
  #   session until the server's now + lease_ms (in `<session hash>:c`). The copy is served
  #   until t0 + min(lease, ttl / 2) - margin on this node's clock, t0 taken before the
  #   read was sent, so it ends before the server's lease does (and a session read from the
  #   cache is still touched by a read at least twice per ttl).
  # * The node is subscribed to the session's channel before such a read is sent (the
  #   backend process does it, and records until when it stays subscribed, `subscribed`).
  # * A change script returns the other nodes' live leases with the ms left of each; the
  #   writer waits for each node's acknowledgement (it comes when that node's backend
  #   process dropped its copies) or for that lease to run out, and only then returns.
  # * Copies carry the session's epoch when their read was sent (a counter per session);
  #   a change seen here bumps it, so a copy read before (even one whose reply came after)
  #   is never served. A session forgotten here has its counter set to @dead for good, so a
  #   copy still in flight for it can never be served either.
  #
  # Rows: `{{session, name}, variable, counter, epoch, valid_until}` (valid_until in native
  # monotonic time) and per session `{{session}, counter, subscribed_until}` (ms).

  alias DSPex.Bridge.Redis
  alias DSPex.Bridge.SessionStore.RedisBackend.Locks

  @type t :: :ets.tid()

  @spec new() :: t()
  def new,
    do: :ets.new(:dspex_redis_read_cache, [:public, read_concurrency: true])

  @doc false
  # Clock margin of a copy under a lease of `lease_ms`: clocks of the nodes and the server
  # run at rates within far less than this of each other.
  def margin(lease_ms), do: 5 + div(lease_ms, 100)

  # Above any count of changes.
  @dead 4_611_686_018_427_387_904

  @spec fetch(t(), term(), term()) :: {:ok, struct()} | :miss
  def fetch(cache, id, name) do
    case :ets.lookup(cache, {id, name}) do
      [{_, var, counter, epoch, valid_until}] when epoch < @dead ->
        if :atomics.get(counter, 1) == epoch and :erlang.monotonic_time() < valid_until,
          do: {:ok, var},
          else: :miss

      [] ->
        :miss
    end
  end

  @doc false
  # The session's epoch now, `{counter, value}`: taken before a read is sent.
  def epoch(cache, id) do
    case :ets.lookup(cache, {id}) do
      [{_, counter, _} = row] ->
        case :atomics.get(counter, 1) do
          # Left by a forget that raced a subscription: replaced.
          epoch when epoch >= @dead ->
            :ets.delete_object(cache, row)
            epoch(cache, id)

          epoch ->
            {counter, epoch}
        end

      [] ->
        :ets.insert_new(cache, {{id}, :atomics.new(1, signed: false), 0})
        epoch(cache, id)
    end
  end

  @doc false
  # The native monotonic time `ms` from `t0` (native), for a copy's valid_until.
  def after_ms(t0, ms), do: t0 + System.convert_time_unit(ms, :millisecond, :native)

  @doc false
  # True when this node stays subscribed to the session's changes at least until `until`.
  def subscribed?(cache, id, until) do
    case :ets.lookup(cache, {id}) do
      [{_, _, subscribed_until}] -> subscribed_until >= until
      [] -> false
    end
  end

  @doc false
  # The backend process subscribed the session's channel until `until`.
  def subscribed(cache, id, until) do
    epoch(cache, id)
    :ets.update_element(cache, {id}, {3, until})
  end

  @doc false
  def put(cache, id, name, var, {counter, epoch}, valid_until),
    do: :ets.insert(cache, {{id, name}, var, counter, epoch, valid_until})

  @doc false
  # A change of the session was seen (or made) here: no copy read before is served again.
  def invalidate(cache, id) do
    case :ets.lookup(cache, {id}) do
      [{_, counter, _}] -> :atomics.add(counter, 1, 1)
      [] -> :ok
    end
  end

  @doc false
  # The session is no longer followed here (unsubscribed, or deleted).
  def forget(cache, id) do
    Enum.each(:ets.lookup(cache, {id}), &kill(cache, &1))
    :ets.match_delete(cache, {{id, :_}, :_, :_, :_, :_})
  end

  @doc false
  # The subscriber connection is gone: changes may have been missed.
  def clear(cache) do
    Enum.each(:ets.match_object(cache, {{:_}, :_, :_}), &kill(cache, &1))
    :ets.match_delete(cache, {{:_, :_}, :_, :_, :_, :_})
  end

  defp kill(cache, {_key, counter, _} = row) do
    :atomics.put(counter, 1, @dead)
    :ets.delete_object(cache, row)
  end

  @doc false
  def now, do: System.monotonic_time(:millisecond)

  # ---------------------------------------------------------------------------------------
  # acknowledgements: a writer waits for them, the caching nodes send them

  @doc false
  # The writer's wait: `cachers` as the change script returned them (node id, ms of lease
  # left, ...); done when each acknowledged under `tag` or its lease ran out.
  def await_acknowledgements(_tag, []), do: :ok

  def await_acknowledgements(tag, cachers) do
    now = now()
    pending = cachers |> Enum.chunk_every(2) |> Map.new(fn [node, left] -> {node, now + left} end)
    await(tag, pending)
  end

  defp await(_tag, pending) when map_size(pending) == 0, do: :ok

  defp await(tag, pending) do
    next = pending |> Map.values() |> Enum.min()

    receive do
      {:dspex_cache_ack, ^tag, node} -> await(tag, Map.delete(pending, node))
    after
      max(next - now(), 0) ->
        now = now()
        await(tag, Map.reject(pending, fn {_node, ends} -> ends <= now end))
    end
  end

  @doc false
  # Acknowledgements that came after the wait ended (the tag is unaliased by then).
  def flush_acknowledgements(tag) do
    receive do
      {:dspex_cache_ack, ^tag, _node} -> flush_acknowledgements(tag)
    after
      0 -> :ok
    end
  end

  @doc false
  # This node dropped its copies of `writer`'s change: tell it, on its node's channel.
  def acknowledge(backend, writer, tag) do
    channel = Locks.grants_channel(backend, writer)
    Redis.command(backend.conn, ["PUBLISH", channel, "a|" <> backend.node_id <> "|" <> tag])
  end

  @doc false
  # `<node>|<tag>` on this node's channel: that node dropped its copies of one of our
  # changes; its writer waits on the tag (a process alias, so a late one is dropped).
  def acknowledged(ack) do
    with [node, tag] <- :binary.split(ack, "|"),
         {:ok, alias} when is_reference(alias) <- decode_tag(tag) do
      :erlang.send(alias, {:dspex_cache_ack, alias, node})
    end
  end

  defp decode_tag(tag) do
    {:ok, :erlang.binary_to_term(tag, [:safe])}
  rescue
    ArgumentError -> :error
  end
end
