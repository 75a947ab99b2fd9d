defmodule DSPex.Bridge.Analytics do
  @moduledoc """
  Metrics for everything that crosses the bridge: counters, gauges and histograms with
  labels, windowed aggregations, a dashboard, exports and alerts.

  Recording is one NIF call into the calling scheduler's shard of a Rust engine
  (`dspex_core::analytics`): no process, no global lock, and no allocation for a series seen
  before. Reads merge the shards.

      iex> alias DSPex.Bridge.Analytics
      iex> :ok = Analytics.observe("doc_latency_us", 120, %{op: "read"})
      iex> :ok = Analytics.observe(:doc_latency_us, 80, %{op: "read"})
      iex> :ok = Analytics.increment(:doc_requests)
      iex> now = System.system_time(:millisecond)
      iex> Analytics.get_metrics(:doc_latency_us, now - 60_000, now, :max)
      {:ok, 120.0}
      iex> Analytics.get_metrics(:doc_requests, now - 60_000, now, :sum)
      {:ok, 1.0}

  ## Metrics, labels and limits

  A metric is named by an atom or string matching `[a-zA-Z_][a-zA-Z0-9_]*` and keeps the
  kind it was first recorded as (`{:error, {:kind_mismatch, message}}` otherwise). Labels are
  a map of at most 16 entries; names are atoms or strings (the same rule as metric names, not
  starting with `__`), values atoms, strings or integers. Each metric keeps at most
  `max_series_per_metric` label sets (default 1,000); later label sets are counted together
  in one series labelled `overflow="true"`, so no caller can make memory grow without bound.

  Memory is bounded by `shards × max_metrics × (max_series_per_metric + 1) × S`. A counter
  or gauge series `S` takes at most 12 KiB per shard (totals plus 60 one-second and 60
  one-minute slots); a histogram series adds, per slot, at most 32 bytes per distinct bucket
  (16 while the buckets are spread out; a latency distribution uses tens to a few hundred
  buckets). `memory/0` tells what the engine holds now. So one counter metric driven past its
  limit costs at most `shards × 1,001 × 12 KiB` (≈ 23.5 MiB with 2 shards and the default
  1,000 series), whatever the number of label sets callers send; the load test records 10
  million values over 10,000 label sets and checks exactly that bound (plus 8 MiB for the
  allocator and key caches). Lower the limits with the `:dspex_bridge, :analytics` config
  (`max_metrics:`, `max_series_per_metric:`) where memory matters; `limits/0` shows them.

  ## Windows and accuracy

  Every series keeps all-time totals, 60 one-second slots and 60 one-minute slots. A range
  that starts within the last minute is answered to the second, one that starts within the
  last hour to the minute (slots overlapping the range count whole); an older start is
  refused with `{:error, {:beyond_retention, message}}`. Histogram quantiles are within
  0.79 % of the exact order statistic (log-linear buckets, 64 per octave, for values from
  1e-9 to 1e15; clamped to the exact minimum and maximum).

  ## What is recorded without wiring

  | metric | kind | labels | recorded by |
  |---|---|---|---|
  | `variable_reads` | counter | | `SessionStore` reads (counted exactly, folded in once a second) |
  | `variable_writes` | counter | | `SessionStore` writes |
  | `variable_read_latency_seconds` | histogram | | `SessionStore` reads, 1 in 64 timed |
  | `variable_write_latency_seconds` | histogram | | `SessionStore` writes |
  | `operation_errors` | counter | `op` | failed SessionStore reads and writes |
  | `active_sessions` | gauge | | sessions alive (create, delete, and once a second) |
  | `access_decisions` | counter | `result`, `cache` | `AccessControl` decisions (folded in once a second) |
  | `lock_acquisitions`, `lock_conflicts` | counter | | `OptimizerCoordinator` (folded in once a second) |
  | `lock_wait_seconds` | histogram | | acquisitions that queued before the grant |
  | `optimizations` | counter | `outcome`: `completed` / `failed` | `OptimizerCoordinator` |
  | `breaker_calls` | counter | `breaker`, `outcome` | `CircuitBreaker.call/3` |
  | `python_call_latency_seconds` | histogram | `pool`, `tool`, `outcome`: `ok` / `error` | `DSPex.Bridge.Python.call/4`, each attempt |
  | `optimization_iteration`, `optimization_best` | gauge | `optimizer` | `OptimizerCoordinator.report_progress/4` (best: the objective's metric) |

  When the host application ships `:telemetry`, the `[:dspex, :bridge, ...]` events that
  carry a `duration_us` are also recorded as `telemetry_duration_seconds{event: "..."}`.

  ## Alerts

  Rules are evaluated once a second; a rule that fires or resolves is emitted as
  `[:dspex, :bridge, :analytics, :alert_fired | :alert_resolved]`. Two rules are installed
  by default: `high_error_rate` (errors over 5 % of operations in the last minute, for 30 s,
  `:critical`) and `slow_reads` (sampled read p95 above 10 ms over the last minute, for 30 s,
  `:warning`). See `put_alert/1`.
  """

  alias DSPex.Bridge.Analytics.Recorder
  alias DSPex.Bridge.{Native, Options}

  @max_name_bytes 255
  # Times and steps cross the NIF as u64 milliseconds; 2^62 ms is far past any real time.
  @max_time_ms 4_611_686_018_427_387_904

  @engine :dspex_bridge_analytics_engine

  @typedoc "A metric name."
  @type name :: atom() | String.t()
  @typedoc "Labels: atom/string keys to atom/string/integer values."
  @type labels :: %{optional(atom() | String.t()) => atom() | String.t() | integer()}
  @typedoc "A point in time: a `DateTime` or wall-clock milliseconds."
  @type time :: DateTime.t() | non_neg_integer()
  @typedoc "How a range is reduced to one number."
  @type aggregation ::
          :avg | :sum | :min | :max | :count | :p50 | :p95 | :p99 | :rate | :last
  @typedoc "A named range."
  @type range :: :last_minute | :last_hour | :all | :cluster
  @typedoc "Every figure of a range (nil where a figure has no value)."
  @type figures :: %{
          count: non_neg_integer(),
          sum: float(),
          min: float() | nil,
          max: float() | nil,
          avg: float() | nil,
          last: float() | nil,
          p50: float() | nil,
          p95: float() | nil,
          p99: float() | nil,
          rate: float() | nil
        }
  @typedoc "Why a call failed."
  @type error :: {:error, {atom(), term()}}

  @aggregations [:avg, :sum, :min, :max, :count, :p50, :p95, :p99, :rate, :last]

  @doc false
  @spec init() :: :ok
  def init do
    unless :persistent_term.get(@engine, nil) do
      config = Application.get_env(:dspex_bridge, :analytics, [])

      engine =
        Native.analytics_init(
          Keyword.get(config, :max_metrics, 1_000),
          Keyword.get(config, :max_series_per_metric, 1_000),
          Keyword.get(config, :key_cache_per_shard, 65_536)
        )

      :persistent_term.put(@engine, engine)
    end

    :ok
  end

  @compile {:inline, engine: 0}
  defp engine, do: :persistent_term.get(@engine)

  @doc """
  Records one value of `type` (a histogram observation): the spec's name for `observe/3`.
  """
  @spec record_metric(name(), number(), labels()) :: :ok | error()
  def record_metric(type, value, metadata \\ %{})

  def record_metric(type, value, metadata) when is_number(value) and is_map(metadata),
    do: Native.analytics_record(:histogram, type, value, metadata)

  def record_metric(type, value, metadata), do: bad(type, value, metadata)

  @doc """
  Adds one observation of a non-negative `value` (a latency, a size) to histogram `name`.
  """
  @spec observe(name(), number(), labels()) :: :ok | error()
  def observe(name, value, labels \\ %{})

  def observe(name, value, labels) when is_number(value) and is_map(labels),
    do: Native.analytics_record(:histogram, name, value, labels)

  def observe(name, value, labels), do: bad(name, value, labels)

  @doc "Adds `amount` (default 1, never negative) to counter `name`."
  @spec increment(name(), number(), labels()) :: :ok | error()
  def increment(name, amount \\ 1, labels \\ %{})

  def increment(name, amount, labels) when is_number(amount) and is_map(labels),
    do: Native.analytics_record(:counter, name, amount, labels)

  def increment(name, amount, labels), do: bad(name, amount, labels)

  @doc "Sets gauge `name` to `value` (any finite number)."
  @spec gauge(name(), number(), labels()) :: :ok | error()
  def gauge(name, value, labels \\ %{})

  def gauge(name, value, labels) when is_number(value) and is_map(labels),
    do: Native.analytics_record(:gauge, name, value, labels)

  def gauge(name, value, labels), do: bad(name, value, labels)

  @doc false
  # A label value for an id that may be any term (a pool or optimizer name).
  @spec label(term()) :: atom() | String.t() | integer()
  def label(v) when is_atom(v) or is_integer(v), do: v
  def label(v) when is_binary(v) and byte_size(v) <= 255, do: v
  def label(v) when is_binary(v), do: binary_part(v, 0, 255)
  def label(v), do: inspect(v, limit: 10)

  defp bad(_name, value, _labels) when not is_number(value),
    do: {:error, {:not_a_number, value}}

  defp bad(_name, _value, labels), do: {:error, {:invalid_labels, labels}}

  @doc """
  One aggregation of `type` between two times (both included): `{:ok, number | nil}`.

  `nil` means the range holds no value for it (no records; a quantile of a counter or
  gauge). Options: `labels:` only series whose labels include these.
  """
  @spec get_metrics(name(), time(), time(), aggregation(), keyword()) ::
          {:ok, number() | nil} | error()
  def get_metrics(type, start_time, end_time, aggregation, opts \\ [])

  def get_metrics(type, start_time, end_time, aggregation, opts)
      when aggregation in @aggregations do
    with {:ok, figures} <- summary(type, {start_time, end_time}, opts) do
      {:ok, Map.fetch!(figures, aggregation)}
    end
  end

  def get_metrics(_type, _start, _end, aggregation, _opts),
    do: {:error, {:unknown_aggregation, aggregation}}

  @doc """
  Every figure of `type` (a metric, or a list of metrics merged) over a range:
  `{:ok, figures}`.

  `range` is `:last_minute`, `:last_hour`, `:all` (all-time totals) or `{start, end}`.
  """
  @spec summary(name() | [name()], range() | {time(), time()}, keyword()) ::
          {:ok, figures()} | error()
  def summary(type, range, opts \\ []) do
    Recorder.flush()

    with {:ok, names} <- metric_names(type),
         {:ok, filter} <- filter(opts),
         {:ok, source} <- source(opts),
         {:ok, range} <- native_range(range) do
      Native.analytics_summary(source, names, filter, range, now())
    end
  end

  @doc """
  `type` between two times in steps of `step_ms`: `{:ok, [{DateTime.t(), figures}]}`, one
  point per step, empty steps included. The step must be a multiple of the resolution
  (1,000 ms within the last minute, 60,000 ms within the last hour).
  """
  @spec query_time_series(name(), time(), time(), pos_integer(), keyword()) ::
          {:ok, [{DateTime.t(), figures()}]} | error()
  def query_time_series(type, start_time, end_time, step_ms, opts \\ [])

  def query_time_series(type, start_time, end_time, step_ms, opts)
      when is_integer(step_ms) and step_ms > 0 and step_ms <= @max_time_ms do
    Recorder.flush()

    with {:ok, name} <- metric_name(type),
         {:ok, filter} <- filter(opts),
         {:ok, source} <- source(opts),
         {:ok, {s, e}} <- times(start_time, end_time),
         {:ok, points} <-
           Native.analytics_time_series(source, name, filter, s, e, step_ms, now()) do
      {:ok, Enum.map(points, fn {t, f} -> {DateTime.from_unix!(t, :millisecond), f} end)}
    end
  end

  def query_time_series(_type, _start, _end, step_ms, _opts),
    do: {:error, {:invalid_step, step_ms}}

  @doc """
  The dashboard over `range` (`:last_minute`, `:last_hour`, `:all`, or `:cluster` for the
  last minute merged over every connected node).

      iex> {:ok, d} = DSPex.Bridge.Analytics.get_dashboard()
      iex> Enum.sort(Map.keys(d)) -- [:range]
      [:active_sessions, :avg_read_latency, :avg_write_latency, :cache_hit_rate, :error_rate,
       :optimization_success_rate, :p95_latency, :total_operations, :variable_reads,
       :variable_writes]

  Latencies are in microseconds; rates are fractions in `[0, 1]` (nil when nothing was
  counted).
  """
  @spec get_dashboard(range()) :: {:ok, map()} | error()
  def get_dashboard(range \\ :last_minute) do
    Recorder.flush()

    with {:ok, source, range} <- dashboard_source(range) do
      DSPex.Bridge.Analytics.Dashboard.build(source, range, now())
    end
  end

  defp dashboard_source(:cluster) do
    with {:ok, merged} <- cluster_engine(), do: {:ok, merged, {:last, 60}}
  end

  defp dashboard_source(range) do
    with {:ok, r} <- native_range(range), do: {:ok, engine(), r}
  end

  @doc """
  Every series in `format` (`:prometheus`, `:json`, `:csv`, `:statsd`) over `range`:
  `{:ok, text}`.

  Prometheus: counters and a summary's `_sum`/`_count` are all-time totals (they never go
  down); histogram quantiles cover `range`. Names are prefixed with `dspex_`.
  """
  @spec export_metrics(:prometheus | :json | :csv | :statsd, range() | {time(), time()}) ::
          {:ok, String.t()} | error()
  def export_metrics(format, range \\ :last_minute)

  def export_metrics(format, range) when format in [:prometheus, :json, :csv, :statsd] do
    Recorder.flush()

    with {:ok, source, r} <- dashboard_source(range) do
      Native.analytics_export(source, format, r, now(), "dspex_")
    end
  end

  def export_metrics(format, _range), do: {:error, {:unknown_format, format}}

  @doc """
  Every metric: `[{name, kind, series_count}]` (the overflow series included).
  """
  @spec metrics() :: [{String.t(), :counter | :gauge | :histogram, non_neg_integer()}]
  def metrics, do: Native.analytics_metrics(engine())

  @doc """
  The engine's limits: shards (one per scheduler thread), metric names, label sets per metric.
  """
  @spec limits() :: %{
          shards: pos_integer(),
          max_metrics: pos_integer(),
          max_series_per_metric: pos_integer()
        }
  def limits do
    {shards, metrics, series} = Native.analytics_limits()
    %{shards: shards, max_metrics: metrics, max_series_per_metric: series}
  end

  @doc """
  Bytes of memory the engine holds, counted from the capacities of its own structures (the
  allocator's bookkeeping excluded). Locks each shard in turn: poll it for monitoring, not
  on a hot path. An engine that holds nothing (after `reset/0`, or before anything was
  recorded) holds no memory of its own.

      iex> DSPex.Bridge.Analytics.increment(:doc_memory_probe)
      :ok
      iex> DSPex.Bridge.Analytics.memory() > 0
      true
  """
  @spec memory() :: non_neg_integer()
  def memory, do: Native.analytics_memory()

  @doc """
  This node's data as a checked binary frame (what `get_dashboard(:cluster)` fetches from
  every node).
  """
  @spec snapshot() :: binary()
  def snapshot do
    Recorder.flush()
    Native.analytics_snapshot(engine(), now())
  end

  @doc """
  Merges snapshot frames into a read-only engine that `summary/3` (`source:` option),
  `get_dashboard/1` and `export_metrics/2` can read.
  """
  @spec merge_snapshots([binary()]) :: {:ok, reference()} | error()
  def merge_snapshots(frames) when is_list(frames) do
    if Options.proper_list?(frames) and Enum.all?(frames, &is_binary/1),
      do: Native.analytics_merge(frames),
      else: {:error, {:bad_snapshot, "frames must be binaries"}}
  end

  def merge_snapshots(_frames), do: {:error, {:bad_snapshot, "frames must be a list of binaries"}}

  @doc false
  # What get_dashboard(:cluster) fetches from each node: its tallies flushed first, so the
  # cluster view counts what the node's own dashboard would.
  def flushed_snapshot do
    Recorder.flush()
    snapshot()
  end

  defp cluster_engine do
    nodes = Node.list()
    remote = :erpc.multicall(nodes, __MODULE__, :flushed_snapshot, [], 5_000)
    frames = for {:ok, frame} <- remote, is_binary(frame), do: frame
    merge_snapshots([snapshot() | frames])
  end

  @doc """
  Adds or replaces an alert rule.

  Fields: `name:` (string), `metric:` with `aggregation:` (default `:avg`), or `ratio:
  {{numerator_metric, aggregation}, {denominator_metric, aggregation}}` (a metric may be a
  list of metrics, merged); `above:` or
  `below:` a threshold; `window_s:` (default 60); `for_ms:` (default 0); `severity:`
  (default `:warning`).

      iex> DSPex.Bridge.Analytics.put_alert(name: "doc_slow", metric: :doc_latency_us,
      ...>   aggregation: :p99, above: 1_000, for_ms: 5_000)
      :ok
      iex> DSPex.Bridge.Analytics.remove_alert("doc_slow")
      :ok
  """
  @spec put_alert(keyword() | map()) :: :ok | error()
  def put_alert(rule) when is_map(rule) do
    with {:ok, tuple} <- alert_tuple(rule) do
      Native.analytics_put_alert(engine(), tuple)
    end
  end

  def put_alert(rule) when is_list(rule) do
    if Options.proper_list?(rule) and Keyword.keyword?(rule),
      do: put_alert(Map.new(rule)),
      else: {:error, {:invalid_alert, rule}}
  end

  def put_alert(rule), do: {:error, {:invalid_alert, rule}}

  defp alert_tuple(rule) do
    with {:ok, name} <- alert_field(rule, :name, &(is_binary(&1) and &1 != "")),
         {:ok, expr} <- alert_expr(rule),
         {:ok, cmp, threshold} <- alert_threshold(rule),
         {:ok, window} <- alert_field(rule, :window_s, &(is_integer(&1) and &1 in 1..3600), 60),
         {:ok, for_ms} <- alert_field(rule, :for_ms, &(is_integer(&1) and &1 >= 0), 0),
         {:ok, severity} <- alert_field(rule, :severity, &is_atom/1, :warning) do
      {:ok, {name, expr, cmp, threshold / 1, window, for_ms, Atom.to_string(severity)}}
    end
  end

  defp alert_field(rule, key, valid?, default \\ :required) do
    case Map.fetch(rule, key) do
      {:ok, v} ->
        if valid?.(v), do: {:ok, v}, else: {:error, {:invalid_alert, {key, v}}}

      :error when default == :required ->
        {:error, {:invalid_alert, {:missing, key}}}

      :error ->
        {:ok, default}
    end
  end

  defp alert_expr(%{ratio: {{n, na}, {d, da}}}) do
    with {:ok, n} <- metric_names(n),
         {:ok, d} <- metric_names(d),
         {:ok, na} <- native_aggregation(na),
         {:ok, da} <- native_aggregation(da),
         do: {:ok, {:ratio, {n, na}, {d, da}}}
  end

  defp alert_expr(%{metric: m} = rule) do
    with {:ok, m} <- metric_names(m),
         {:ok, agg} <- native_aggregation(Map.get(rule, :aggregation, :avg)),
         do: {:ok, {:value, {m, agg}}}
  end

  defp alert_expr(_rule), do: {:error, {:invalid_alert, {:missing, :metric}}}

  defp native_aggregation(a) when a in @aggregations, do: {:ok, a}
  defp native_aggregation(a), do: {:error, {:unknown_aggregation, a}}

  defp alert_threshold(%{above: t}) when is_number(t), do: {:ok, :above, t}
  defp alert_threshold(%{below: t}) when is_number(t), do: {:ok, :below, t}
  defp alert_threshold(_), do: {:error, {:invalid_alert, {:missing, :above_or_below}}}

  @doc "Removes an alert rule; `:ok` or `{:error, :not_found}`."
  @spec remove_alert(String.t()) :: :ok | {:error, :not_found}
  def remove_alert(name) when is_binary(name) and byte_size(name) <= @max_name_bytes do
    if String.valid?(name) and Native.analytics_remove_alert(engine(), name),
      do: :ok,
      else: {:error, :not_found}
  end

  def remove_alert(_name), do: {:error, :not_found}

  @doc """
  Every alert rule with its state: `[{name, severity, :inactive | {:pending, since_ms} |
  {:firing, since_ms, value}}]`.
  """
  @spec alerts() :: [{String.t(), String.t(), term()}]
  def alerts, do: Native.analytics_alerts(engine())

  @doc false
  # Called by the recorder once a second; returns the effects (also emitted as events).
  def evaluate_alerts do
    effects = Native.analytics_evaluate_alerts(engine(), now())

    for effect <- effects do
      case effect do
        {:fired, rule, severity, value, threshold} ->
          DSPex.Bridge.Events.emit(
            [:dspex, :bridge, :analytics, :alert_fired],
            %{value: value, threshold: threshold},
            %{rule: rule, severity: severity}
          )

        {:resolved, rule, severity, value, fired_for_ms} ->
          DSPex.Bridge.Events.emit(
            [:dspex, :bridge, :analytics, :alert_resolved],
            %{value: value, fired_for_ms: fired_for_ms},
            %{rule: rule, severity: severity}
          )
      end
    end

    effects
  end

  @doc "Forgets every recorded metric (alert rules stay). For tests and resets."
  @spec reset() :: :ok
  def reset do
    Recorder.flush()
    Native.analytics_clear(engine())
  end

  defp now, do: System.system_time(:millisecond)

  defp source(opts) do
    case Keyword.get(opts, :source) do
      nil -> {:ok, engine()}
      merged when is_reference(merged) -> {:ok, merged}
      other -> {:error, {:invalid_source, other}}
    end
  end

  defp metric_name(name) when is_atom(name) and name not in [nil, true, false],
    do: {:ok, Atom.to_string(name)}

  defp metric_name(name) when is_binary(name) and byte_size(name) <= @max_name_bytes do
    if String.valid?(name), do: {:ok, name}, else: {:error, {:invalid_name, name}}
  end

  defp metric_name(name), do: {:error, {:invalid_name, name}}

  defp metric_names([_ | _] = names) do
    if Options.proper_list?(names) do
      checked = Enum.map(names, &metric_name/1)
      Enum.find(checked, {:ok, for({:ok, n} <- checked, do: n)}, &match?({:error, _}, &1))
    else
      {:error, {:invalid_name, names}}
    end
  end

  defp metric_names(name), do: with({:ok, n} <- metric_name(name), do: {:ok, [n]})

  defp filter(opts) when is_list(opts) do
    if Options.proper_list?(opts) and Keyword.keyword?(opts),
      do: labels_filter(opts),
      else: {:error, {:invalid_options, opts}}
  end

  defp filter(opts), do: {:error, {:invalid_options, opts}}

  defp labels_filter(opts) do
    case Keyword.get(opts, :labels, %{}) do
      labels when is_map(labels) ->
        pairs = for {k, v} <- labels, do: {label_text(k), label_text(v)}

        if Enum.all?(pairs, fn {k, v} -> is_binary(k) and is_binary(v) end),
          do: {:ok, pairs},
          else: {:error, {:invalid_labels, labels}}

      other ->
        {:error, {:invalid_labels, other}}
    end
  end

  defp label_text(v) when is_binary(v) do
    if String.valid?(v), do: v, else: nil
  end

  defp label_text(v) when is_atom(v), do: Atom.to_string(v)
  defp label_text(v) when is_integer(v), do: Integer.to_string(v)
  defp label_text(v), do: v

  defp native_range(:last_minute), do: {:ok, {:last, 60}}
  defp native_range(:last_hour), do: {:ok, {:last, 3600}}
  defp native_range(:all), do: {:ok, :all}
  defp native_range({s, e}), do: times(s, e)
  defp native_range(other), do: {:error, {:invalid_range, other}}

  defp times(s, e) do
    with {:ok, s} <- ms(s), {:ok, e} <- ms(e) do
      if e < s, do: {:error, {:inverted_range, {s, e}}}, else: {:ok, {s, e}}
    end
  end

  defp ms(%DateTime{} = t), do: {:ok, DateTime.to_unix(t, :millisecond)}
  defp ms(t) when is_integer(t) and t >= 0 and t <= @max_time_ms, do: {:ok, t}
  defp ms(t), do: {:error, {:invalid_time, t}}
end
