defmodule DSPex.Bridge.PythonWorker do
  @moduledoc """
  A supervised pool of Python worker processes, each behind an Erlang Port.

  Each worker runs `priv/python/dspex_worker.py` (or `script:`) and speaks length-prefixed
  JSON (`{:packet, 4}`); JSON is encoded and decoded in the NIF with `serde_json`.

  * Requests carry ids; each has its own timeout. A request that times out gets
    `{:error, :timeout}` at its deadline and the worker's Python process is **restarted**
    (a stuck interpreter never holds the pool); other requests in flight on that worker get
    `{:error, :worker_restarted}`.
  * A Python process that exits or is killed is restarted by the pool's supervisor; its
    callers get `{:error, {:worker_exited, status}}`.
  * Every `health_interval_ms` an idle worker is pinged; one that does not answer in time is
    restarted.
  * A reply that is not JSON gives its caller `{:error, {:invalid_response, detail}}`; one
    over `max_response_bytes` gives `{:error, :oversized_response}`. The worker goes on.

  Python-side errors come back as `{:error, {:python, type, message}}`.

  ## Example

      {:ok, _} = DSPex.Bridge.PythonWorker.start_pool(:python, size: 2)
      {:ok, "pong"} = DSPex.Bridge.PythonWorker.call(:python, "ping", %{})
  """

  alias DSPex.Bridge.Options
  alias DSPex.Bridge.PythonWorker.Worker

  @registry DSPex.Bridge.PythonWorker.Registry
  @pools DSPex.Bridge.PythonWorker.Pools
  @table :dspex_bridge_python_pools

  @doc false
  def child_spec(_) do
    %{
      id: __MODULE__,
      type: :supervisor,
      start: {__MODULE__, :start_link, []}
    }
  end

  @doc false
  def start_link do
    children = [
      {Registry, keys: :unique, name: @registry},
      {DynamicSupervisor, name: @pools, strategy: :one_for_one},
      {DSPex.Bridge.TableOwner, {@table, [:set, read_concurrency: true]}}
    ]

    Supervisor.start_link(children, strategy: :one_for_all, name: __MODULE__.Supervisor)
  end

  @doc """
  Starts a pool. Options: `size:` (default 2), `python:` (default `python3` on the PATH),
  `script:` (default the bundled worker), `health_interval_ms:` (default 5_000),
  `max_response_bytes:` (default 16 MiB).
  """
  @spec start_pool(term(), keyword()) :: {:ok, pid()} | {:error, term()}
  def start_pool(pool, opts \\ []) do
    spec = %{
      size: &Options.pos_integer?/1,
      python: &is_binary/1,
      script: &is_binary/1,
      health_interval_ms: &Options.pos_integer?/1,
      max_response_bytes: &Options.pos_integer?/1
    }

    with {:ok, o} <- Options.take(opts, spec),
         {:ok, python} <- find_python(Map.get(o, :python, "python3")),
         script = Map.get(o, :script, default_script()),
         :ok <- check_script(script) do
      size = Map.get(o, :size, 2)

      config = %{
        pool: pool,
        python: python,
        script: script,
        health_interval_ms: Map.get(o, :health_interval_ms, 5_000),
        max_response_bytes: Map.get(o, :max_response_bytes, 16 * 1024 * 1024)
      }

      if :ets.insert_new(@table, {pool, size, :atomics.new(1, [])}) do
        workers =
          for i <- 1..size, do: Supervisor.child_spec({Worker, Map.put(config, :index, i)}, id: i)

        # Python processes may die often when the dependency is sick; restart them freely.
        sup = %{
          id: {:pool, pool},
          type: :supervisor,
          start:
            {Supervisor, :start_link,
             [workers, [strategy: :one_for_one, max_restarts: 1_000, max_seconds: 10]]}
        }

        case DynamicSupervisor.start_child(@pools, sup) do
          {:ok, pid} ->
            :ets.update_element(@table, pool, {2, {size, pid}})
            {:ok, pid}

          error ->
            :ets.delete(@table, pool)
            error
        end
      else
        {:error, {:already_started, pool}}
      end
    end
  end

  @doc "Stops a pool and its Python processes."
  @spec stop_pool(term()) :: :ok | {:error, term()}
  def stop_pool(pool) do
    case :ets.lookup(@table, pool) do
      [{^pool, {_size, sup}, _}] ->
        :ets.delete(@table, pool)
        DynamicSupervisor.terminate_child(@pools, sup)

      _ ->
        {:error, {:unknown_pool, pool}}
    end
  end

  @doc """
  Calls `tool` with `args` (a JSON-able term) on the next worker of `pool`, round robin.
  `timeout` is in milliseconds (default 5_000).
  """
  @spec call(term(), String.t() | atom(), term(), non_neg_integer()) ::
          {:ok, term()} | {:error, term()}
  def call(pool, tool, args, timeout \\ 5_000)

  def call(pool, tool, args, timeout)
      when (is_binary(tool) or is_atom(tool)) and is_integer(timeout) and timeout > 0 do
    case :ets.lookup(@table, pool) do
      [{^pool, {size, _sup}, counter}] ->
        start = :atomics.add_get(counter, 1, 1)

        # A worker being restarted is skipped for the next one.
        Enum.find_value(0..(size - 1), {:error, :worker_unavailable}, fn k ->
          case Registry.lookup(@registry, {pool, rem(start + k, size) + 1}) do
            [{pid, _}] -> Worker.call(pid, to_string(tool), args, timeout)
            [] -> nil
          end
        end)

      _ ->
        {:error, {:unknown_pool, pool}}
    end
  end

  def call(_pool, tool, _args, timeout) when is_binary(tool) or is_atom(tool),
    do: {:error, {:invalid_option, {:timeout, timeout}}}

  def call(_pool, tool, _args, _timeout), do: {:error, {:invalid_tool, tool}}

  @doc "The OS pids of a pool's Python processes (for operations and tests)."
  @spec os_pids(term()) :: [non_neg_integer()]
  def os_pids(pool) do
    case :ets.lookup(@table, pool) do
      [{^pool, {size, _}, _}] ->
        for i <- 1..size,
            [{pid, _}] <- [Registry.lookup(@registry, {pool, i})],
            os = Worker.os_pid(pid),
            do: os

      _ ->
        []
    end
  end

  @doc false
  def registry, do: @registry

  defp default_script, do: Path.join(:code.priv_dir(:dspex_bridge), "python/dspex_worker.py")

  # Resolve the interpreter itself once, so version-manager shims are not in the way of
  # every restart (or of an OS kill).
  defp find_python(python) do
    with path when is_binary(path) <- System.find_executable(python),
         {real, 0} <- System.cmd(path, ["-c", "import sys; sys.stdout.write(sys.executable)"]),
         true <- File.regular?(real) do
      {:ok, real}
    else
      _ -> {:error, {:python_not_found, python}}
    end
  end

  defp check_script(script) do
    if File.regular?(script), do: :ok, else: {:error, {:script_not_found, script}}
  end
end
