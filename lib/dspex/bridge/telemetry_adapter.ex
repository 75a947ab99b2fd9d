defmodule DSPex.Bridge.TelemetryAdapter do
  @moduledoc false
  # The one place that calls `:telemetry`. The project has no hex dependencies, so
  # `:telemetry` is used only when the host application ships it; the check runs once at
  # start and is cached.

  @key :dspex_bridge_telemetry_available

  @spec init() :: :ok
  def init do
    :persistent_term.put(@key, Code.ensure_loaded?(:telemetry))
    DSPex.Bridge.Events.refresh()
  end

  @spec available?() :: boolean()
  def available?, do: :persistent_term.get(@key, false)

  @doc false
  # For tests that load a stand-in :telemetry and must leave none behind.
  def forget do
    :persistent_term.put(@key, false)
    DSPex.Bridge.Events.refresh()
  end

  @spec attach(String.t(), [[atom()]], function()) :: :ok | {:error, term()}
  def attach(id, events, handler) do
    # credo:disable-for-next-line
    apply(:telemetry, :attach_many, [id, events, handler, nil])
  end

  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    # credo:disable-for-next-line
    apply(:telemetry, :execute, [event, measurements, metadata])
    :ok
  end
end
