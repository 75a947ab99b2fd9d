defmodule DSPex.Bridge.PythonWorker.Pool do
  @moduledoc false
  # The supervisor of one pool's workers: its local workers (permanent, slot 1..size) and
  # the remote workers that dial in (temporary: a lost connection is the worker's end; the
  # remote side dials again). It is registered under {:pool, name} with the pool's counters
  # and the digest of its remote token (nil: none accepted) as the value, so a pool is known
  # exactly while its supervisor lives.
  use Supervisor

  alias DSPex.Bridge.PythonWorker
  alias DSPex.Bridge.PythonWorker.Worker

  def child_spec(config) do
    %{id: {__MODULE__, config.pool}, type: :supervisor, start: {__MODULE__, :start_link, [config]}}
  end

  def start_link(config) do
    # 1: the round-robin counter; 1 + i: how often local slot i has started.
    config = Map.put(config, :counter, :atomics.new(1 + config.size, []))
    value = Map.take(config, [:counter, :health_interval_ms, :max_response_bytes])
    value = Map.put(value, :token, config.token_digest)
    name = {:via, Registry, {PythonWorker.registry(), {:pool, config.pool}, value}}
    Supervisor.start_link(__MODULE__, config, name: name)
  end

  @doc false
  # A remote worker for a connection whose hello was accepted.
  def start_remote(sup, config) do
    id = {:remote, System.unique_integer([:positive])}

    spec = %{
      id: id,
      start: {Worker, :start_link, [Map.put(config, :index, id)]},
      restart: :temporary
    }

    Supervisor.start_child(sup, spec)
  end

  @impl true
  def init(config) do
    workers =
      for i <- 1..config.size//1,
          do: Supervisor.child_spec({Worker, Map.put(config, :index, i)}, id: i)

    # Python processes may die often when the dependency is sick; restart them freely.
    Supervisor.init(workers, strategy: :one_for_one, max_restarts: 1_000, max_seconds: 10)
  end
end
