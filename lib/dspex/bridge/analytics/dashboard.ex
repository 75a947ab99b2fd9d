defmodule DSPex.Bridge.Analytics.Dashboard do
  @moduledoc false
  # The dashboard's figures from the automatically recorded metrics (see
  # DSPex.Bridge.Analytics for the table of metrics).

  alias DSPex.Bridge.Native

  @spec build(reference(), term(), non_neg_integer()) :: {:ok, map()} | {:error, term()}
  def build(source, range, now) do
    q = fn metrics, filter -> Native.analytics_summary(source, metrics, filter, range, now) end

    with {:ok, reads} <- q.(["variable_reads"], []),
         {:ok, writes} <- q.(["variable_writes"], []),
         {:ok, read_lat} <- q.(["variable_read_latency_seconds"], []),
         {:ok, write_lat} <- q.(["variable_write_latency_seconds"], []),
         {:ok, lat} <-
           q.(["variable_read_latency_seconds", "variable_write_latency_seconds"], []),
         {:ok, hits} <- q.(["access_decisions"], [{"cache", "hit"}]),
         {:ok, decisions} <- q.(["access_decisions"], []),
         {:ok, errors} <- q.(["operation_errors"], []),
         {:ok, done} <- q.(["optimizations"], [{"outcome", "completed"}]),
         {:ok, optimizations} <- q.(["optimizations"], []),
         {:ok, sessions} <-
           Native.analytics_summary(source, ["active_sessions"], [], :all, now) do
      total = reads.sum + writes.sum

      {:ok,
       %{
         range: range,
         variable_reads: trunc(reads.sum),
         variable_writes: trunc(writes.sum),
         avg_read_latency: micros(read_lat.avg),
         avg_write_latency: micros(write_lat.avg),
         p95_latency: micros(lat.p95),
         cache_hit_rate: ratio(hits.sum, decisions.sum),
         total_operations: trunc(total),
         error_rate: ratio(errors.sum, total),
         active_sessions: trunc(sessions.last || 0),
         optimization_success_rate: ratio(done.sum, optimizations.sum)
       }}
    end
  end

  # Latencies are recorded in seconds (the Prometheus base unit) and shown in microseconds.
  defp micros(nil), do: nil
  defp micros(seconds), do: seconds * 1.0e6

  defp ratio(_part, whole) when whole == 0, do: nil
  defp ratio(part, whole), do: part / whole
end
