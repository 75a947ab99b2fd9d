defmodule DSPex.Bridge.Analytics.Recorder do
  @moduledoc false
  # The analytics process: once a second it folds the exact read count into
  # `variable_reads` and evaluates the alert rules. It installs the default alert rules and,
  # when `:telemetry` is loaded, a handler recording event durations.
  #
  # The hottest paths (reads: one ETS lookup; cached access decisions; uncontended locks)
  # only bump an atomic here, folded into their counters once a second and before every
  # query; every 64th read is also timed.

  use GenServer

  alias DSPex.Bridge.Analytics

  @tallies :dspex_bridge_tallies
  @sample 64
  @tick_ms 1_000

  # slot => {metric, labels}
  @slots %{
    1 => {:variable_reads, %{}},
    2 => {:lock_acquisitions, %{}},
    3 => {:lock_conflicts, %{}}
  }

  # Access decisions are counted by the NIF (DSPex.Bridge.Native.acl_take_counts/0), in
  # this order.
  @decision_labels [
    %{result: "allow", cache: "hit"},
    %{result: "allow", cache: "miss"},
    %{result: "deny", cache: "hit"},
    %{result: "deny", cache: "miss"}
  ]

  @spec init_counters() :: :ok
  def init_counters do
    unless :persistent_term.get(@tallies, nil) do
      :persistent_term.put(@tallies, :atomics.new(map_size(@slots), signed: false))
    end

    :ok
  end

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc """
  Counts one read; true when this read should also be timed.
  """
  @compile {:inline, count_read: 0}
  @spec count_read() :: boolean()
  def count_read do
    rem(:atomics.add_get(:persistent_term.get(@tallies), 1, 1), @sample) == 0
  end

  @doc "Counts one lock acquisition (`true`) or conflict (`false`)."
  @spec count_lock(boolean()) :: :ok
  def count_lock(true), do: :atomics.add(:persistent_term.get(@tallies), 2, 1)
  def count_lock(false), do: :atomics.add(:persistent_term.get(@tallies), 3, 1)

  @doc "Folds the tallies counted so far into their counters."
  @spec flush() :: :ok
  def flush do
    case :persistent_term.get(@tallies, nil) do
      nil ->
        :ok

      ref ->
        for {slot, {metric, labels}} <- @slots do
          case :atomics.exchange(ref, slot, 0) do
            0 -> :ok
            n -> Analytics.increment(metric, n, labels)
          end
        end

        for {n, labels} <- Enum.zip(DSPex.Bridge.Native.acl_take_counts(), @decision_labels),
            n > 0,
            do: Analytics.increment(:access_decisions, n, labels)

        :ok
    end
  end

  @default_alerts [
    [
      name: "high_error_rate",
      ratio: {{:operation_errors, :sum}, {[:variable_reads, :variable_writes], :sum}},
      above: 0.05,
      window_s: 60,
      for_ms: 30_000,
      severity: :critical
    ],
    [
      name: "slow_reads",
      metric: :variable_read_latency_seconds,
      aggregation: :p95,
      above: 0.010,
      window_s: 60,
      for_ms: 30_000,
      severity: :warning
    ]
  ]

  # The events that carry a `duration_us` measurement.
  @timed_events [
    [:dspex, :bridge, :variable, :read],
    [:dspex, :bridge, :variable, :write],
    [:dspex, :bridge, :access, :decision],
    [:dspex, :bridge, :access, :denied],
    [:dspex, :bridge, :dependency, :propagation_completed]
  ]

  @doc false
  def default_alerts, do: @default_alerts

  @impl true
  def init(:ok) do
    for rule <- @default_alerts, do: :ok = Analytics.put_alert(rule)
    attach_telemetry()
    schedule()
    {:ok, nil}
  end

  @impl true
  def handle_info(:tick, state) do
    Analytics.gauge(:active_sessions, length(DSPex.Bridge.SessionStore.list_sessions()))
    flush()
    Analytics.evaluate_alerts()
    schedule()
    {:noreply, state}
  end

  defp schedule, do: Process.send_after(self(), :tick, @tick_ms)

  @doc false
  # Also called by tests after loading a :telemetry module.
  def attach_telemetry do
    if DSPex.Bridge.TelemetryAdapter.available?() do
      DSPex.Bridge.TelemetryAdapter.attach(
        "dspex-analytics",
        @timed_events,
        &__MODULE__.handle_telemetry/4
      )
    end
  end

  @doc false
  def handle_telemetry(event, %{duration_us: d}, _metadata, _config) when is_number(d) and d >= 0 do
    Analytics.observe(:telemetry_duration_seconds, d / 1.0e6, %{
      event: Enum.map_join(event, ".", &to_string/1)
    })
  end

  def handle_telemetry(_event, _measurements, _metadata, _config), do: :ok
end
