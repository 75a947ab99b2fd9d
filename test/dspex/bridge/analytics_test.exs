defmodule DSPex.Bridge.AnalyticsTest do
  use ExUnit.Case, async: true

  alias DSPex.Bridge.Analytics
  doctest DSPex.Bridge.Analytics

  defp metric(tag), do: "t_#{tag}_#{System.unique_integer([:positive])}"
  defp now, do: System.system_time(:millisecond)

  defp last_minute(name, agg, opts \\ []),
    do: Analytics.get_metrics(name, now() - 59_000, now(), agg, opts)

  test "counters, gauges and histograms aggregate over the last minute" do
    h = metric("h")
    for v <- [10, 20, 30, 40], do: :ok = Analytics.observe(h, v, %{op: "read"})
    :ok = Analytics.record_metric(h, 1_000, %{op: "write"})

    assert {:ok, 5} = last_minute(h, :count)
    assert {:ok, 1100.0} = last_minute(h, :sum)
    assert {:ok, 10.0} = last_minute(h, :min)
    assert {:ok, 1000.0} = last_minute(h, :max)
    assert {:ok, 25.0} = last_minute(h, :avg, labels: %{op: "read"})
    assert {:ok, 25.0} = last_minute(h, :avg, labels: %{"op" => :read})
    assert {:ok, p50} = last_minute(h, :p50, labels: %{op: "read"})
    assert abs(p50 - 20) <= 20 * 0.008
    assert {:ok, rate} = last_minute(h, :rate)
    assert rate > 0

    c = metric("c")
    :ok = Analytics.increment(c)
    :ok = Analytics.increment(c, 4, %{session: "s1", n: 7})
    assert {:ok, 5.0} = last_minute(c, :sum)
    assert {:ok, 4.0} = last_minute(c, :sum, labels: %{n: 7})
    assert {:ok, nil} = last_minute(c, :p95)

    g = metric("g")
    :ok = Analytics.gauge(g, 3)
    :ok = Analytics.gauge(g, -2.5)
    assert {:ok, -2.5} = last_minute(g, :last)
    assert {:ok, %{count: 2, last: -2.5}} = Analytics.summary(g, :all)
    assert {:ok, %{count: 0, avg: nil}} = Analytics.summary(metric("none"), :last_hour)
  end

  test "time series have one point per step" do
    c = metric("ts")
    for _ <- 1..3, do: :ok = Analytics.increment(c)
    t = now()
    start = div(t, 1_000) * 1_000 - 9_000
    assert {:ok, points} = Analytics.query_time_series(c, start, t, 1_000)
    assert length(points) == 10
    assert Enum.sum(Enum.map(points, fn {%DateTime{}, f} -> f.count end)) == 3
    assert {:error, {:invalid_step, _}} = Analytics.query_time_series(c, t - 9_999, t, 1_500)
    assert {:error, {:invalid_step, 0}} = Analytics.query_time_series(c, t - 9_999, t, 0)

    assert {:ok, [_ | _]} =
             Analytics.query_time_series(
               c,
               DateTime.add(DateTime.utc_now(), -600, :second),
               DateTime.utc_now(),
               60_000
             )
  end

  describe "bad input records nothing and says why" do
    test "values" do
      m = metric("bad")

      for v <- [:nan, :infinity, "1", nil, [1]] do
        assert {:error, {:not_a_number, ^v}} = Analytics.observe(m, v)
        assert {:error, {:not_a_number, ^v}} = Analytics.increment(m, v)
        assert {:error, {:not_a_number, ^v}} = Analytics.gauge(m, v)
        assert {:error, {:not_a_number, ^v}} = Analytics.record_metric(m, v)
      end

      assert {:error, {:negative_value, _}} = Analytics.observe(m, -1)
      assert {:error, {:negative_value, _}} = Analytics.increment(m, -1)
      refute Enum.any?(Analytics.metrics(), fn {name, _, _} -> name == m end)
    end

    test "names and labels" do
      m = metric("labels")
      assert {:error, {:invalid_labels, _}} = Analytics.observe(m, 1, %{1 => "a"})
      assert {:error, {:invalid_labels, _}} = Analytics.observe(m, 1, %{{:k} => "a"})
      assert {:error, {:invalid_labels, _}} = Analytics.observe(m, 1, %{k: 1.5})
      assert {:error, {:invalid_labels, _}} = Analytics.observe(m, 1, %{k: self()})
      assert {:error, {:invalid_labels, _}} = Analytics.observe(m, 1, k: 1)
      assert {:error, {:invalid_name, _}} = Analytics.observe(m, 1, %{"bad key" => 1})
      assert {:error, {:invalid_name, _}} = Analytics.observe(m, 1, %{__reserved: 1})

      assert {:error, {:invalid_labels, _}} =
               Analytics.observe(m, 1, Map.new(1..17, &{:"k#{&1}", &1}))

      assert {:error, {:invalid_labels, _}} =
               Analytics.observe(m, 1, %{k: String.duplicate("x", 1_025)})

      assert {:error, {:invalid_name, _}} = Analytics.observe("9lives", 1)
      assert {:error, {:invalid_name, _}} = Analytics.observe({:x}, 1)
      assert {:error, {:invalid_name, _}} = Analytics.observe(42, 1)
      refute Enum.any?(Analytics.metrics(), fn {name, _, _} -> name == m end)

      :ok = Analytics.increment(m)
      assert {:error, {:kind_mismatch, _}} = Analytics.observe(m, 1)
      assert {:ok, %{count: 1}} = Analytics.summary(m, :all)
    end

    test "queries" do
      m = metric("q")
      :ok = Analytics.increment(m)
      t = now()
      assert {:error, {:unknown_aggregation, :median}} = Analytics.get_metrics(m, t - 1, t, :median)
      assert {:error, {:inverted_range, _}} = Analytics.get_metrics(m, t, t - 1, :sum)
      assert {:error, {:beyond_retention, _}} = Analytics.get_metrics(m, t - 7_200_000, t, :sum)
      assert {:error, {:invalid_time, -5}} = Analytics.get_metrics(m, -5, t, :sum)
      assert {:error, {:invalid_time, "now"}} = Analytics.get_metrics(m, t, "now", :sum)
      assert {:error, {:invalid_name, 1}} = Analytics.get_metrics(1, t - 1, t, :sum)

      assert {:error, {:invalid_labels, _}} =
               Analytics.get_metrics(m, t - 1, t, :sum, labels: [a: 1])

      assert {:error, {:invalid_range, :yesterday}} = Analytics.get_dashboard(:yesterday)
      assert {:error, {:invalid_source, :x}} = Analytics.summary(m, :all, source: :x)
      assert {:error, {:invalid_options, :x}} = Analytics.summary(m, :all, :x)

      assert {:error, {:invalid_source, 1}} =
               Analytics.query_time_series(m, t - 1, t, 1_000, source: 1)

      assert {:error, {:unknown_format, :xml}} = Analytics.export_metrics(:xml)
      assert {:error, {:invalid_range, 7}} = Analytics.export_metrics(:json, 7)
      assert {:error, {:bad_snapshot, _}} = Analytics.merge_snapshots(["garbage"])
      assert {:error, {:bad_snapshot, _}} = Analytics.merge_snapshots([:x])
    end

    test "alert rules" do
      assert {:error, {:invalid_alert, {:missing, :name}}} =
               Analytics.put_alert(metric: :x, above: 1)

      assert {:error, {:invalid_alert, {:missing, :metric}}} =
               Analytics.put_alert(name: "a", above: 1)

      assert {:error, {:invalid_alert, {:missing, :above_or_below}}} =
               Analytics.put_alert(name: "a", metric: :x)

      assert {:error, {:unknown_aggregation, :mode}} =
               Analytics.put_alert(name: "a", metric: :x, aggregation: :mode, above: 1)

      assert {:error, {:invalid_alert, {:window_s, 0}}} =
               Analytics.put_alert(name: "a", metric: :x, above: 1, window_s: 0)

      assert {:error, {:invalid_alert, {:for_ms, -1}}} =
               Analytics.put_alert(name: "a", metric: :x, above: 1, for_ms: -1)

      assert {:error, {:invalid_alert, 7}} = Analytics.put_alert(7)
      assert {:error, :not_found} = Analytics.remove_alert("never")
      assert {:error, :not_found} = Analytics.remove_alert(:never)
    end
  end

  test "16 processes x 100,000 increments give the exact total" do
    m = metric("load")

    1..16
    |> Enum.map(fn i ->
      Task.async(fn ->
        for _ <- 1..100_000, do: :ok = Analytics.increment(m, 1, %{worker: rem(i, 4)})
      end)
    end)
    |> Task.await_many(60_000)

    assert {:ok, %{count: 1_600_000, sum: 1.6e6}} = Analytics.summary(m, :all)

    assert {:ok, 400_000.0} =
             Analytics.get_metrics(m, now() - 59_000, now(), :sum, labels: %{worker: 0})
  end

  test "percentiles are within 1% of the exact values on known distributions" do
    uniform = for i <- 1..100_000, do: i / 10
    :rand.seed(:exsss, {1, 2, 3})
    exponential = for _ <- 1..100_000, do: -:math.log(1 - :rand.uniform()) * 250
    lognormal = for _ <- 1..100_000, do: :math.exp(:rand.normal(3.0, 1.5))

    for {label, values} <- [uniform: uniform, exponential: exponential, lognormal: lognormal] do
      m = metric(label)
      Enum.each(values, &(:ok = Analytics.observe(m, &1)))
      sorted = Enum.sort(values)
      {:ok, figures} = Analytics.summary(m, :last_minute)

      for {key, q} <- [p50: 0.5, p95: 0.95, p99: 0.99] do
        exact = Enum.at(sorted, ceil(q * length(sorted)) - 1)
        got = Map.fetch!(figures, key)
        assert abs(got - exact) <= 0.01 * exact, "#{label} #{key}: #{got} vs exact #{exact}"
      end
    end
  end

  test "exports: JSON, CSV and StatsD describe every series" do
    m = metric("export")
    :ok = Analytics.observe(m, 5, %{op: "read, \"quoted\""})
    :ok = Analytics.increment(m <> "_count", 2)

    {:ok, json} = Analytics.export_metrics(:json)
    # Read back by a real JSON parser (Python's), which prints the entry's fields one a line.
    file = Path.join(System.tmp_dir!(), "dspex_export_#{System.unique_integer([:positive])}.json")
    File.write!(file, json)
    on_exit(fn -> File.rm(file) end)

    script =
      "import json,sys; e=[x for x in json.load(open(sys.argv[1])) if x['metric']==sys.argv[2]][0]; " <>
        "print(e['kind']); print(e['count']); print(e['labels']['op'])"

    python = Application.get_env(:dspex_bridge, :python) || "python3"
    assert {out, 0} = System.cmd(python, ["-c", script, file, m])
    assert String.split(out, "\n", trim: true) == ["histogram", "1", ~s(read, "quoted")]

    {:ok, csv} = Analytics.export_metrics(:csv)
    [header | rows] = String.split(csv, "\r\n", trim: true)
    assert header == "metric,kind,labels,count,sum,min,max,avg,last,p50,p95,p99,rate"
    assert Enum.any?(rows, &String.starts_with?(&1, ~s(#{m},histogram,"op=read, ""quoted""",1,5)))

    {:ok, statsd} = Analytics.export_metrics(:statsd)
    assert statsd =~ "dspex_#{m}.count:1|c|#op:read_ \"quoted\"\n"
    assert statsd =~ "dspex_#{m}_count:2|c\n"

    for line <- String.split(statsd, "\n", trim: true),
        do: assert(line =~ ~r/^[\w.]+:-?[\d.e+-]+\|(c|g)(\|#.*)?$/)
  end

  test "snapshots merge: two frames of one node count twice" do
    m = metric("snap")
    :ok = Analytics.increment(m, 3)
    frame = Analytics.snapshot()
    assert {:ok, merged} = Analytics.merge_snapshots([frame, frame])
    assert {:ok, %{sum: 6.0}} = Analytics.summary(m, :all, source: merged)
    assert {:ok, %{sum: 6.0}} = Analytics.summary(m, :last_minute, source: merged)
    assert {:ok, %{variable_reads: _}} = Analytics.get_dashboard(:cluster)
    <<last>> = binary_part(frame, byte_size(frame) - 1, 1)
    corrupt = binary_part(frame, 0, byte_size(frame) - 1) <> <<Bitwise.bxor(last, 1)>>
    assert {:error, {:bad_snapshot, _}} = Analytics.merge_snapshots([frame, corrupt])
  end
end
