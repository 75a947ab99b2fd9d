# Analytics benchmarks: `MIX_ENV=prod mix run benches/analytics.exs`.
#
# Baselines in the same run, written here:
# - `:counters.add/3`: the floor (one BIF on a preallocated counter, no labels, no windows);
# - the spec's reference design: one ETS insert per event ({metric, timestamp, unique}, value,
#   metadata) and aggregation by `:ets.select` over the time range (sorting for quantiles).
# "Equal work" = record N events, then answer count/avg/p95 over the last minute.
Code.require_file("bench_helper.exs", __DIR__)
alias DSPex.Bench
alias DSPex.Bridge.Analytics

defmodule EtsReference do
  @table :bench_analytics_reference
  def new, do: :ets.new(@table, [:named_table, :public, :ordered_set, write_concurrency: true])

  def record(type, value, metadata) do
    :ets.insert(
      @table,
      {{type, System.system_time(:millisecond), :erlang.unique_integer()}, value, metadata}
    )
  end

  def aggregate(type, start_ms, end_ms) do
    ms = [
      {{{type, :"$1", :_}, :"$2", :_}, [{:>=, :"$1", start_ms}, {:"=<", :"$1", end_ms}], [:"$2"]}
    ]

    values = :ets.select(@table, ms) |> Enum.sort()
    n = length(values)
    avg = if n > 0, do: Enum.sum(values) / n
    p95 = if n > 0, do: Enum.at(values, max(ceil(0.95 * n) - 1, 0))
    {n, avg, p95}
  end

  def clear, do: :ets.delete_all_objects(@table)
end

EtsReference.new()
counter = :counters.new(1, [:write_concurrency])
n = 1_000_000

IO.puts("== recording from Elixir (median of 7 rounds of #{n} calls; loop included) ==")

results =
  Bench.compare(
    [
      {:counters, fn -> :counters.add(counter, 1, 1) end},
      {:observe, fn -> Analytics.record_metric(:bench_latency_us, 12.5) end},
      {:increment, fn -> Analytics.increment(:bench_requests) end},
      {:observe_label, fn -> Analytics.record_metric(:bench_latency_us, 12.5, %{op: "read"}) end},
      {:observe_3_labels,
       fn ->
         Analytics.record_metric(:bench_latency_us, 12.5, %{
           op: "read",
           session: "s1",
           variable: :temperature
         })
       end},
      {:ets_reference, fn -> EtsReference.record(:bench_latency_us, 12.5, %{}) end}
    ],
    n
  )
  |> Map.new()

EtsReference.clear()
floor = results.counters
Bench.row(":counters.add (floor)", Bench.fmt(floor))

for {label, key} <- [
      {"record_metric/2 (histogram, no labels)", :observe},
      {"increment/1 (counter, no labels)", :increment},
      {"record_metric/3, one label", :observe_label},
      {"record_metric/3, three labels", :observe_3_labels},
      {"reference: one ETS insert per event", :ets_reference}
    ] do
  ns = results[key]
  Bench.row(label, "#{Bench.fmt(ns)}  (#{Float.round(ns / floor, 1)}x the floor)")
end

Bench.row(
  "record_metric/2 vs the ETS reference (recording only)",
  "#{Float.round(results.ets_reference / results.observe, 1)}x faster"
)

IO.puts(
  "\n== equal work: record 200,000 values, then count/avg/p95 of the last minute (best of 5) =="
)

events = 200_000
values = for i <- 1..events, do: rem(i * 7919, 10_000) / 10

ours = fn ->
  Analytics.reset()
  Enum.each(values, &Analytics.record_metric(:bench_equal_us, &1))
  now = System.system_time(:millisecond)
  {:ok, s} = Analytics.summary(:bench_equal_us, {now - 60_000, now})
  {s.count, s.avg, s.p95}
end

reference = fn ->
  EtsReference.clear()
  Enum.each(values, &EtsReference.record(:bench_equal_us, &1, %{}))
  now = System.system_time(:millisecond)
  EtsReference.aggregate(:bench_equal_us, now - 60_000, now)
end

# Best of five alternating rounds each, so a noisy neighbour hurts both sides alike.
rounds = for _ <- 1..5, do: {:timer.tc(ours), :timer.tc(reference)}
{_, {count, avg, p95}} = rounds |> hd() |> elem(0)
{_, {rcount, ravg, rp95}} = rounds |> hd() |> elem(1)
ours_us = rounds |> Enum.map(fn {{t, _}, _} -> t end) |> Enum.min()
ref_us = rounds |> Enum.map(fn {_, {t, _}} -> t end) |> Enum.min()
true = count == rcount
true = abs(avg - ravg) < 1.0e-6 * ravg
true = abs(p95 - rp95) <= 0.0079 * rp95
Bench.row("ours: #{events} records + aggregate", Bench.fmt(ours_us * 1000))
Bench.row("reference: #{events} ETS inserts + select + sort", Bench.fmt(ref_us * 1000))
Bench.row("ratio (equal work)", "#{Float.round(ref_us / ours_us, 1)}x faster")

IO.puts("\n== get_dashboard over 1,000,000 recorded events ==")
Analytics.reset()

for _ <- 1..250_000 do
  Analytics.increment(:variable_reads)
  Analytics.increment(:variable_writes)
  Analytics.record_metric(:variable_read_latency_seconds, 40 + :rand.uniform(60))
  Analytics.record_metric(:variable_write_latency_seconds, 400 + :rand.uniform(600))
end

dash_ns = Bench.ns_per_call(fn -> Analytics.get_dashboard() end, 200)
{:ok, dash} = Analytics.get_dashboard()
true = dash.total_operations == 500_000
Bench.row("get_dashboard/0 (1M events in the last minute)", Bench.fmt(dash_ns))
{prom_us, {:ok, _}} = :timer.tc(fn -> Analytics.export_metrics(:prometheus) end)
Bench.row("export_metrics(:prometheus)", Bench.fmt(prom_us * 1000))
Analytics.reset()
