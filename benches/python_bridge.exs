# The Python round trip a user feels, against the floors they could pick instead, in one run:
#
#   MIX_ENV=prod DSPEX_PYTHON=_build/dspex_python/bin/python mix run benches/python_bridge.exs
#
# * full stack: DSPex.Bridge.Python.call/4 (rate limit -> bulkhead -> breaker -> worker ->
#   protobuf over fds 3/4 -> the SDK's thread pool -> back), 1 and 4 workers;
# * the floor: a raw Port {:packet, 4} echo to a bare Python read/write loop (no protocol);
# * ctx.get_variable from a tool: the tool's own round trip to SessionStore and back.
alias DSPex.Bridge.{CircuitBreaker, Python, PythonWorker, RateLimiter, SessionStore}

defmodule Bench do
  def percentile(sorted, p), do: Enum.at(sorted, min(length(sorted) - 1, trunc(length(sorted) * p)))

  def latencies(n, fun) do
    for _ <- 1..n do
      t = System.monotonic_time(:nanosecond)
      fun.()
      System.monotonic_time(:nanosecond) - t
    end
    |> Enum.sort()
  end

  def row(label, sorted) do
    us = fn ns -> :io_lib.format("~.1f", [ns / 1000]) end

    IO.puts(
      String.pad_trailing(label, 58) <>
        "p50 #{us.(percentile(sorted, 0.5))} us  p99 #{us.(percentile(sorted, 0.99))} us"
    )

    percentile(sorted, 0.5)
  end

  def throughput(label, total, concurrency, fun) do
    t = System.monotonic_time(:microsecond)

    1..total
    |> Task.async_stream(fn _ -> fun.() end, max_concurrency: concurrency, timeout: 60_000)
    |> Stream.run()

    rate = total / ((System.monotonic_time(:microsecond) - t) / 1.0e6)
    IO.puts(String.pad_trailing(label, 58) <> "#{round(rate)} calls/s")
    rate
  end
end

tools = Path.expand("test/support/python")
python = System.get_env("DSPEX_PYTHON") || "python3"
n = 5_000

# The floor: a bare loop echoing {:packet, 4} frames on stdin/stdout.
bare = ~S"""
import sys, struct
i, o = sys.stdin.buffer, sys.stdout.buffer
while True:
    h = i.read(4)
    if len(h) < 4: break
    (n,) = struct.unpack(">I", h)
    o.write(h + i.read(n)); o.flush()
"""

port =
  Port.open({:spawn_executable, System.find_executable(python)}, [
    :binary,
    {:packet, 4},
    args: ["-u", "-c", bare]
  ])

payload = :erlang.term_to_binary(%{value: 1})

raw =
  Bench.latencies(n, fn ->
    Port.command(port, payload)
    receive do: ({^port, {:data, _}} -> :ok)
  end)

IO.puts("Python bridge round trips (#{System.schedulers_online()} schedulers, #{n} calls each)")
floor = Bench.row("raw Port {:packet, 4} echo to a bare Python loop (floor)", raw)

{:ok, s} = SessionStore.create_session("bench_python")
{:ok, _} = SessionStore.register_variable(s, :temperature, :float, 0.5)
:ok = RateLimiter.start_limiter(:bench_limit, capacity: 1_000_000_000, per_second: 1_000_000_000)

for size <- [1, 4] do
  pool = :"bench_pool_#{size}"

  {:ok, _} =
    PythonWorker.start_pool(pool, size: size, modules: ["fault_tools"], python_path: [tools])

  :ok = CircuitBreaker.start_breaker(pool, failure_threshold: 1_000_000)
  Process.sleep(500)

  call = fn ->
    {:ok, 1} = Python.call(s, "echo", %{value: 1}, pool: pool, rate_limit: :bench_limit)
  end

  for _ <- 1..500, do: call.()

  p50 = Bench.row("full stack echo, #{size} worker(s)", Bench.latencies(n, call))

  IO.puts(
    String.pad_trailing("  ratio to the floor (goal <= 1.2)", 58) <>
      :erlang.float_to_binary(p50 / floor, decimals: 2)
  )

  # Throughput: sessionless calls spread over the workers.
  spread = fn -> {:ok, 1} = PythonWorker.call(pool, "echo", %{value: 1}) end

  Bench.throughput(
    "echo throughput, #{size} worker(s), 64 callers (goal 40,000 at 4)",
    40_000,
    64,
    spread
  )

  if size == 1 do
    read = fn -> {:ok, _} = Python.call(s, "read", %{name: "temperature"}, pool: pool) end
    for _ <- 1..200, do: read.()
    with_read = Bench.latencies(2_000, read)
    echo = Bench.latencies(2_000, call)
    p = Bench.percentile(with_read, 0.5) - Bench.percentile(echo, 0.5)

    IO.puts(
      String.pad_trailing("ctx.get_variable round trip inside a tool (goal < 150 us)", 58) <>
        "p50 #{Float.round(p / 1000, 1)} us"
    )
  end

  PythonWorker.stop_pool(pool)
end
