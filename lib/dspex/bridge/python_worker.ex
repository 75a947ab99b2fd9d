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
  import DSPex.Bridge.Options, only: [is_id: 1]

  # The most interpreters one pool starts.
  @max_size 256
  # Python reads frames of at most 64 MiB (priv/python/dspex_worker.py).
  @max_request_bytes 64 * 1024 * 1024
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
  Starts a pool named by an atom or a string of 1..255 bytes. Options: `size:` (1..256,
  default 2), `python:` (default `python3` on the PATH), `script:` (default the bundled
  worker), `health_interval_ms:` (default 5_000), `max_response_bytes:` (at most 64 MiB,
  default 16 MiB).
  """
  @spec start_pool(atom() | String.t(), keyword()) :: {:ok, pid()} | {:error, term()}
  def start_pool(pool, opts \\ [])

  def start_pool(pool, _opts) when not is_id(pool), do: {:error, {:invalid_pool_name, pool}}

  def start_pool(pool, opts) do
    spec = %{
      size: &Options.int_in?(&1, 1, @max_size),
      python: &is_binary/1,
      script: &is_binary/1,
      health_interval_ms: &Options.pos_ms?/1,
      max_response_bytes: &Options.int_in?(&1, 1, @max_request_bytes)
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
  `timeout` is in milliseconds (default 5_000, at most `4_294_967_295`).

  The request is checked and encoded in the calling process: `{:error, {:not_serializable,
  detail}}` for a term JSON cannot carry (a pid, an improper list, nesting deeper than 127),
  `{:error, {:request_too_large, bytes, max}}` past 64 MiB, `{:error, {:invalid_option,
  {:timeout, t}}}`. None of these reach a worker, so other callers are never affected.
  """
  @spec call(term(), String.t() | atom(), term(), non_neg_integer()) ::
          {:ok, term()} | {:error, term()}
  def call(pool, tool, args, timeout \\ 5_000)

  def call(pool, tool, args, timeout) when is_binary(tool) or is_atom(tool) do
    # Checked and encoded here, in the caller: a request that cannot be sent fails alone,
    # and the worker (shared by every caller of the pool) only sees well-formed frames.
    with :ok <- check_timeout(timeout),
         {:ok, {size, counter, max_bytes}} <- pool_of(pool),
         {:ok, request} <- Worker.encode_request(to_string(tool), args),
         :ok <- check_size(request, max_bytes) do
      start = :atomics.add_get(counter, 1, 1)

      # A worker being restarted is skipped for the next one.
      Enum.find_value(0..(size - 1), {:error, :worker_unavailable}, fn k ->
        case Registry.lookup(@registry, {pool, rem(start + k, size) + 1}) do
          [{pid, _}] -> Worker.call(pid, request, timeout)
          [] -> nil
        end
      end)
    end
  end

  def call(_pool, tool, _args, _timeout), do: {:error, {:invalid_tool, tool}}

  defp check_timeout(t) do
    if Options.pos_ms?(t), do: :ok, else: {:error, {:invalid_option, {:timeout, t}}}
  end

  defp pool_of(pool) do
    case :ets.lookup(@table, pool) do
      [{^pool, {size, _sup}, counter}] -> {:ok, {size, counter, @max_request_bytes}}
      _ -> {:error, {:unknown_pool, pool}}
    end
  end

  defp check_size({tool_json, args_json}, max) do
    size = byte_size(tool_json) + byte_size(args_json) + 64

    if size <= max, do: :ok, else: {:error, {:request_too_large, size, max}}
  end

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
