defmodule DSPex.Bridge.TestHelpers do
  @moduledoc false

  @doc "A session id no other test uses."
  def unique_id(prefix \\ "s"), do: "#{prefix}_#{System.unique_integer([:positive])}"

  @doc """
  Adds one to an integer variable `n` times, each by read and compare-and-set, retrying on
  a version conflict as an optimistic client must. Also runs on peers.
  """
  def cas_increments(session, name, n) do
    for _ <- 1..n//1, do: cas_increment(session, name)
    :ok
  end

  defp cas_increment(session, name) do
    {:ok, %{value: v, version: version}} = DSPex.Bridge.SessionStore.get_variable(session, name)

    case DSPex.Bridge.SessionStore.update_variable(session, name, v + 1, expected_version: version) do
      {:ok, _} -> :ok
      {:error, {:version_mismatch, _}} -> cas_increment(session, name)
    end
  end

  @doc """
  Reads `name` of `session` `n` times in a row (here, or on a peer): the results.
  """
  def read_values(session, name, n),
    do: Enum.map(1..n, fn _ -> DSPex.Bridge.SessionStore.get_value(session, name) end)

  @doc """
  Starts `n` processes (here, or on a peer) that read `name` in a loop until
  `stop_readers/1`, which returns how many reads they made; every read must succeed.
  """
  def start_readers(session, name, n) do
    for _ <- 1..n, do: spawn(fn -> read_loop(session, name, 0) end)
  end

  defp read_loop(session, name, count) do
    receive do
      {:stop, from} -> send(from, {:reads, count})
    after
      0 ->
        {:ok, _} = DSPex.Bridge.SessionStore.get_variable(session, name)
        read_loop(session, name, count + 1)
    end
  end

  @doc false
  def stop_readers(pids) do
    for pid <- pids, do: send(pid, {:stop, self()})
    for _ <- pids, reduce: 0, do: (n -> receive(do: ({:reads, r} -> n + r)))
  end

  @doc """
  Starts a process (here, or on a peer through `:erpc`) that watches `name` and forwards
  every message it gets to `to`; returns its pid once the watch is in place.
  """
  def forward_watch(session, name, to) do
    parent = self()

    pid =
      spawn(fn ->
        send(parent, {:watching, self(), DSPex.Bridge.SessionStore.watch(session, name)})
        forward(to)
      end)

    receive do
      {:watching, ^pid, {:ok, _}} -> {:ok, pid}
      {:watching, ^pid, error} -> error
    after
      10_000 -> {:error, :timeout}
    end
  end

  defp forward(to) do
    receive do
      message ->
        send(to, message)
        forward(to)
    end
  end

  @doc """
  `n` times: takes `var`'s optimizer lock as `optimizer`, reads the integer, writes it plus
  one with the lock's token (no compare-and-set: only the lock keeps it exact), releases.
  Also runs on peers.
  """
  def lock_increments(session, var, optimizer, n) do
    alias DSPex.Bridge.{OptimizerCoordinator, SessionStore}

    for _ <- 1..n//1 do
      {:ok, lock} =
        OptimizerCoordinator.acquire_lock(var, optimizer, self(),
          session_id: session,
          timeout: 120_000
        )

      {:ok, %{value: v}} = SessionStore.get_variable(session, var)

      {:ok, _} = SessionStore.update_variable(session, var, v + 1, lock_token: lock.token)
      :ok = OptimizerCoordinator.release_lock(var, optimizer, session_id: session)
    end

    :ok
  end

  @doc "Creates a session that is deleted when the test ends."
  def session!(opts \\ []) do
    id = unique_id()
    {:ok, ^id} = DSPex.Bridge.SessionStore.create_session(id, opts)
    ExUnit.Callbacks.on_exit(fn -> DSPex.Bridge.SessionStore.delete_session(id) end)
    id
  end

  @doc "Options of a Python pool that serves the test tools (test/support/python)."
  def python_opts(opts \\ []) do
    [modules: ["fault_tools"], python_path: [Path.expand("test/support/python")]] ++ opts
  end

  @doc "Starts a pool of the test tools, stopped when the test ends."
  def python_pool!(opts \\ []) do
    pool = :"pool_#{System.unique_integer([:positive])}"
    {:ok, _} = DSPex.Bridge.PythonWorker.start_pool(pool, python_opts(opts))
    ExUnit.Callbacks.on_exit(fn -> DSPex.Bridge.PythonWorker.stop_pool(pool) end)
    eventually(fn -> DSPex.Bridge.PythonWorker.call(pool, "ping", %{}) == {:ok, "pong"} end, 20_000)
    pool
  end

  @doc "Waits until `fun` returns a truthy value, polling; fails after `timeout` ms."
  def eventually(fun, timeout \\ 2_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_eventually(fun, deadline)
  end

  defp do_eventually(fun, deadline) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          raise ExUnit.AssertionError, message: "condition not met in time"
        else
          Process.sleep(5)
          do_eventually(fun, deadline)
        end
    end
  end
end

defmodule DSPex.Bridge.TestComputes do
  @moduledoc false
  # Compute functions named by reference ({module, function[, extra]}) in tests.
  def add(%{a: a}, n), do: a + n
  def double_b(%{b: b}), do: b * 2
end

defmodule DSPex.Bridge.TestComputes.Remote do
  @moduledoc false
  # Runs on a peer node: registers a variable computed by a closure made there (this
  # module's code is on every node of a test cluster).
  def register_closure(session_id, name, input) do
    DSPex.Bridge.SessionStore.register_variable(session_id, name, :integer, nil,
      compute: {fn inputs -> Map.fetch!(inputs, input) + 1 end, [input]}
    )
  end
end

defmodule DSPex.Bridge.TestWatcher do
  @moduledoc false
  # A watcher to spawn on another node: it watches `name` of `session_id` and relays every
  # message it gets to `to` as `{:seen, message}`.
  def start(session_id, name, to) do
    {:ok, _} = DSPex.Bridge.SessionStore.watch(session_id, name)
    send(to, :watching)
    relay(to)
  end

  defp relay(to) do
    receive do
      msg ->
        send(to, {:seen, msg})
        relay(to)
    end
  end
end

defmodule DSPex.Bridge.TestWriters do
  @moduledoc false
  # Compare-and-set writers for the linearizability test: each write reads a variable and
  # writes `"tag-seq"` with `expected_version:` the version it read, until `count` writes
  # were acknowledged (or a minute passed). Returns every acknowledged write as
  # `{name, value, version}`, in the order of the acknowledgements; `to` gets `:progress`
  # after each one.
  alias DSPex.Bridge.SessionStore

  def cas(session_id, names, tag, count, to) do
    deadline = System.monotonic_time(:millisecond) + 60_000
    cas_loop(session_id, names, tag, count, to, deadline, 1, [])
  end

  defp cas_loop(session_id, names, tag, count, to, deadline, seq, acked) do
    if length(acked) >= count or System.monotonic_time(:millisecond) > deadline do
      Enum.reverse(acked)
    else
      name = Enum.at(names, rem(seq, length(names)))
      value = "#{tag}-#{seq}"

      with {:ok, var} <- SessionStore.get_variable(session_id, name),
           {:ok, written} <-
             SessionStore.update_variable(session_id, name, value,
               expected_version: var.version,
               timeout: 10_000
             ) do
        send(to, :progress)
        acked = [{name, written.value, written.version} | acked]
        cas_loop(session_id, names, tag, count, to, deadline, seq + 1, acked)
      else
        # Not acknowledged: a version conflict, or no owner for a moment (a failover), when
        # the writer backs off a little rather than spin.
        {:error, {:version_mismatch, _}} ->
          cas_loop(session_id, names, tag, count, to, deadline, seq + 1, acked)

        _ ->
          Process.sleep(5)
          cas_loop(session_id, names, tag, count, to, deadline, seq + 1, acked)
      end
    end
  end
end
