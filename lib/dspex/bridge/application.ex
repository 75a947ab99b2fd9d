defmodule DSPex.Bridge.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    DSPex.Bridge.Events.init()

    children = [
      {Registry, keys: :duplicate, name: DSPex.Bridge.Events.Registry},
      DSPex.Bridge.Events,
      DSPex.Bridge.SessionStore.Supervisor,
      DSPex.Bridge.CircuitBreaker,
      DSPex.Bridge.OptimizerCoordinator,
      DSPex.Bridge.RateLimiter,
      DSPex.Bridge.PythonWorker
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: DSPex.Bridge.Supervisor)
  end
end
