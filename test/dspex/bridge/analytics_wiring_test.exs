defmodule DSPex.Bridge.AnalyticsWiringTest do
  # Not async: these tests reset the node's analytics and read the dashboard.
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{
    AccessControl,
    Analytics,
    CircuitBreaker,
    Events,
    OptimizerCoordinator,
    SessionStore
  }

  setup do
    Analytics.reset()
    :ok
  end

  test "SessionStore, access control, the coordinator and the breaker record without wiring" do
    {:ok, s} = SessionStore.create_session("wiring_#{System.unique_integer([:positive])}")
    {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
    for i <- 2..4, do: {:ok, _} = SessionStore.update_variable(s, :x, i)
    for _ <- 1..128, do: {:ok, _} = SessionStore.get_variable(s, :x)
    {:error, _} = SessionStore.get_variable(s, :missing, caller: s)
    {:error, _} = SessionStore.update_variable(s, :x, "not an integer")

    :ok = AccessControl.check_permission({s, :x}, "stranger", :read) |> then(fn _ -> :ok end)

    {:ok, lock} = OptimizerCoordinator.acquire_lock(:wired_var, :opt_a, self())
    :ok = OptimizerCoordinator.release_lock(:wired_var, :opt_a)
    _ = lock

    _ = CircuitBreaker.start_breaker(:wired_breaker, [])
    {:ok, 1} = CircuitBreaker.call(:wired_breaker, fn -> {:ok, 1} end)

    {:ok, d} = Analytics.get_dashboard()
    assert d.variable_reads == 129
    assert d.variable_writes >= 4
    assert d.total_operations == d.variable_reads + d.variable_writes
    assert d.error_rate > 0
    assert d.avg_write_latency > 0
    assert d.avg_read_latency > 0, "129 reads: at least 2 were timed"
    assert d.p95_latency > 0
    assert d.active_sessions >= 1
    assert is_float(d.cache_hit_rate)

    assert {:ok, 1.0} = Analytics.get_metrics(:lock_acquisitions, now() - 1_000, now(), :sum)

    assert {:ok, 1.0} =
             Analytics.get_metrics(:breaker_calls, now() - 1_000, now(), :sum,
               labels: %{breaker: :wired_breaker, outcome: :success}
             )

    :ok = SessionStore.delete_session(s)
  end

  test "an alert fires and resolves, delivered as events" do
    :ok = Events.subscribe([:dspex, :bridge, :analytics])
    name = "wiring_hot"

    :ok =
      Analytics.put_alert(
        name: name,
        metric: :wiring_temperature,
        aggregation: :last,
        above: 50,
        for_ms: 0,
        severity: :critical
      )

    assert Enum.any?(Analytics.alerts(), &match?({^name, "critical", :inactive}, &1))

    :ok = Analytics.gauge(:wiring_temperature, 80)
    effects = Analytics.evaluate_alerts()
    assert Enum.any?(effects, &match?({:fired, ^name, "critical", 80.0, 50.0}, &1))

    assert_receive {:dspex_event, [:dspex, :bridge, :analytics, :alert_fired], %{value: 80.0},
                    %{rule: ^name}}

    assert Enum.any?(Analytics.alerts(), &match?({^name, _, {:firing, _, 80.0}}, &1))

    :ok = Analytics.gauge(:wiring_temperature, 20)
    effects = Analytics.evaluate_alerts()
    assert Enum.any?(effects, &match?({:resolved, ^name, "critical", 20.0, _}, &1))
    assert_receive {:dspex_event, [:dspex, :bridge, :analytics, :alert_resolved], _, %{rule: ^name}}
    :ok = Analytics.remove_alert(name)
  end

  test "the default alert rules are installed" do
    names = for {name, _, _} <- Analytics.alerts(), do: name
    assert "high_error_rate" in names
    assert "slow_reads" in names
  end

  test "/metrics over HTTP is valid Prometheus text (promtool check metrics)" do
    promtool = System.find_executable("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"

    {:ok, s} = SessionStore.create_session("scrape_#{System.unique_integer([:positive])}")
    {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
    for _ <- 1..20, do: {:ok, _} = SessionStore.get_variable(s, :x)
    :ok = Analytics.observe(:scrape_latency_seconds, 0.25, %{path: "a\"b\\c\nd"})
    :ok = Analytics.increment(:scrape_requests_total)

    {:ok, pid, port} = Analytics.HTTPExporter.start(port: 0)
    {:ok, _} = Application.ensure_all_started(:inets)
    url = ~c"http://127.0.0.1:#{port}/metrics"

    assert {:ok, {{_, 200, _}, headers, body}} =
             :httpc.request(:get, {url, []}, [], body_format: :binary)

    assert {~c"content-type", ~c"text/plain; version=0.0.4; charset=utf-8"} in headers
    assert body =~ "# TYPE dspex_variable_reads_total counter"
    assert body =~ "dspex_variable_reads_total 20"
    assert body =~ ~s(dspex_scrape_latency_seconds{path="a\\"b\\\\c\\nd",quantile="0.5"} 0.25)

    path = Path.join(System.tmp_dir!(), "dspex_metrics_#{System.unique_integer([:positive])}.txt")
    File.write!(path, body)

    {out, status} =
      System.cmd("sh", ["-c", "#{promtool} check metrics < #{path}"], stderr_to_stdout: true)

    File.rm(path)
    assert status == 0, "promtool check metrics failed:\n#{out}\n#{body}"

    assert {:ok, {{_, 404, _}, _, _}} =
             :httpc.request(:get, {~c"http://127.0.0.1:#{port}/other", []}, [], [])

    :ok = Analytics.HTTPExporter.stop(pid)
    :ok = SessionStore.delete_session(s)
  end

  test "when :telemetry is loaded, timed events are recorded too" do
    # A stand-in for the :telemetry library (the project has no hex dependencies), with the
    # two functions the adapter calls.
    Code.compile_string("""
    defmodule :telemetry do
      def attach_many(id, events, fun, config) do
        :persistent_term.put({:telemetry_stub, :handler}, {id, events, fun, config})
        :ok
      end

      def execute(event, measurements, metadata) do
        {_id, events, fun, config} = :persistent_term.get({:telemetry_stub, :handler})
        if event in events, do: fun.(event, measurements, metadata, config)
        :ok
      end
    end
    """)

    try do
      DSPex.Bridge.TelemetryAdapter.init()
      assert DSPex.Bridge.TelemetryAdapter.available?()
      Analytics.Recorder.attach_telemetry()
      Events.emit([:dspex, :bridge, :variable, :read], %{duration_us: 250}, %{})
      Events.emit([:dspex, :bridge, :session, :created], %{}, %{})

      assert {:ok, %{count: 1, max: 2.5e-4}} =
               Analytics.summary(:telemetry_duration_seconds, :last_minute,
                 labels: %{event: "dspex.bridge.variable.read"}
               )
    after
      DSPex.Bridge.TelemetryAdapter.forget()
      :persistent_term.erase({:telemetry_stub, :handler})
      :code.purge(:telemetry)
      :code.delete(:telemetry)
    end
  end

  defp now, do: System.system_time(:millisecond)

  test "label sets past the limit go to the overflow series and memory stays bounded" do
    %{shards: shards, max_series_per_metric: limit} = Analytics.limits()
    m = "t_cardinality_#{System.unique_integer([:positive])}"
    engine_before = Analytics.memory()
    rss_before = rss_bytes()
    per_worker = 5_000_000

    1..2
    |> Enum.map(fn w ->
      Task.async(fn ->
        Enum.each(1..per_worker, fn i ->
          :ok = Analytics.increment(m, 1, %{id: rem(i * 7 + w, 10_000)})
        end)
      end)
    end)
    |> Task.await_many(300_000)

    assert {_, :counter, series} = Enum.find(Analytics.metrics(), fn {n, _, _} -> n == m end)
    assert series == limit + 1
    assert {:ok, %{sum: 1.0e7}} = Analytics.summary(m, :all)
    assert {:ok, %{sum: overflow}} = Analytics.summary(m, :all, labels: %{overflow: "true"})
    assert overflow > 0

    # The documented bound: shards x (limit + 1) x 12 KiB for the series. The engine's own
    # count may add 1 MiB of catalog and key caches; the VM's RSS 8 MiB of allocator slack.
    # (Not async: RSS is only this test's when no other test runs.)
    series_bound = shards * (limit + 1) * 12 * 1024
    held = Analytics.memory() - engine_before
    assert held <= series_bound + 1024 * 1024, "engine holds #{held} more bytes"
    grown = rss_bytes() - rss_before
    bound = series_bound + 8 * 1024 * 1024
    assert grown <= bound, "RSS grew #{grown} bytes, bound #{bound}"
  end

  defp rss_bytes do
    "/proc/self/status"
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(fn
      "VmRSS:" <> rest ->
        rest |> String.trim() |> String.trim_trailing(" kB") |> String.to_integer()

      _ ->
        nil
    end)
    |> Kernel.*(1024)
  end
end
