defmodule DSPex.Bridge.PythonWorker.Pool do
  @moduledoc false
  # The supervisor of one pool's workers. It is registered under {:pool, name} with the
  # pool's size and its round-robin counter as the value, so a pool is known exactly while
  # its supervisor lives.
  use Supervisor

  alias DSPex.Bridge.PythonWorker
  alias DSPex.Bridge.PythonWorker.Worker

  def child_spec(config) do
    %{id: {__MODULE__, config.pool}, type: :supervisor, start: {__MODULE__, :start_link, [config]}}
  end

  def start_link(config) do
    name =
      {:via, Registry,
       {PythonWorker.registry(), {:pool, config.pool}, {config.size, :atomics.new(1, [])}}}

    Supervisor.start_link(__MODULE__, config, name: name)
  end

  @impl true
  def init(config) do
    workers =
      for i <- 1..config.size,
          do: Supervisor.child_spec({Worker, Map.put(config, :index, i)}, id: i)

    # Python processes may die often when the dependency is sick; restart them freely.
    Supervisor.init(workers, strategy: :one_for_one, max_restarts: 1_000, max_seconds: 10)
  end
end
