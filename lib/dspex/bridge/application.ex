defmodule DSPex.Bridge.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    DSPex.Bridge.Events.init()
    DSPex.Bridge.AccessControl.init_audit()
    DSPex.Bridge.Analytics.init()
    DSPex.Bridge.Analytics.Recorder.init_counters()
    DSPex.Bridge.HAManager.forget_ownership()

    children =
      [
        {Registry, keys: :duplicate, name: DSPex.Bridge.Events.Registry},
        DSPex.Bridge.Events,
        DSPex.Bridge.Analytics.Recorder,
        DSPex.Bridge.SessionStore.Supervisor
      ] ++
        DSPex.Bridge.SessionStore.Backends.children() ++
        DSPex.Bridge.HAManager.children() ++
        [
          {DSPex.Bridge.CircuitBreaker, :system},
          DSPex.Bridge.OptimizerCoordinator,
          {DSPex.Bridge.RateLimiter, :system},
          {DSPex.Bridge.PythonWorker, :system}
        ]

    with {:ok, sup} <-
           Supervisor.start_link(children, strategy: :one_for_one, name: DSPex.Bridge.Supervisor),
         :ok <- start_metrics_http() do
      {:ok, sup}
    end
  end

  # The optional /metrics listener, when configured (`config :dspex_bridge, :metrics_http,
  # port: 9568`).
  defp start_metrics_http do
    case Application.get_env(:dspex_bridge, :metrics_http) do
      nil ->
        :ok

      opts ->
        with {:ok, _pid, _port} <- DSPex.Bridge.Analytics.HTTPExporter.start(opts), do: :ok
    end
  end
end
