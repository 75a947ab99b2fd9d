# The Python round trip a user feels, against the floors they could pick instead, in one run:
#
#   MIX_ENV=prod DSPEX_PYTHON=_build/dspex_python/bin/python mix run benches/python_bridge.exs
#
# On a virtual machine whose idle CPUs halt, prefix `taskset -c 0` for figures that compare
# the work of each path rather than the guest's wakeup latency (BENCHMARKS.md says why).
#
# * full stack: DSPex.Bridge.Python.call/4 (rate limit -> bulkhead -> breaker -> worker ->
#   protobuf frames -> the SDK -> back), 1 and 4 workers, local (fds 3/4) and remote (gRPC
#   to the server in the NIF);
# * the floors: a raw Port {:packet, 4} echo to a bare Python read/write loop, and a raw
#   grpcio stream ping-pong between two Python processes (benches/support/grpc_pingpong.py);
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

  def line(label, text), do: IO.puts(String.pad_trailing(label, 64) <> text)

  def row(label, sorted) do
    us = fn ns -> :io_lib.format("~.1f", [ns / 1000]) end
    line(label, "p50 #{us.(percentile(sorted, 0.5))} us  p99 #{us.(percentile(sorted, 0.99))} us")
    percentile(sorted, 0.5)
  end

  # `callers` processes, each making its share of `total` calls back to back.
  def throughput(label, total, callers, fun) do
    t = System.monotonic_time(:microsecond)
    per = div(total, callers)
    tasks = for _ <- 1..callers, do: Task.async(fn -> for _ <- 1..per, do: fun.() end)
    Enum.each(tasks, &Task.await(&1, 120_000))
    rate = per * callers / ((System.monotonic_time(:microsecond) - t) / 1.0e6)
    line(label, "#{round(rate)} calls/s")
    rate
  end

  def ratio(label, value, floor),
    do: line(label, :erlang.float_to_binary(value / floor, decimals: 2))
end

tools = Path.expand("test/support/python")
python = System.get_env("DSPEX_PYTHON") || "python3"
n = 5_000

# The local floor: a bare loop echoing {:packet, 4} frames on stdin/stdout.
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

bare_echo = fn ->
  Port.command(port, payload)
  receive do: ({^port, {:data, _}} -> :ok)
end

raw = Bench.latencies(n, bare_echo)

# The same floor speaking the bridge's protocol: parse a Call frame, answer its Result, no
# SDK (what the protocol itself costs in CPython).
proto_loop = ~S"""
import os, struct, sys
from dspex_bridge import dspex_bridge_pb2 as pb
i, o = os.fdopen(3, "rb", buffering=0), os.fdopen(4, "wb", buffering=0)
while True:
    h = i.read(4)
    if len(h) < 4: break
    (n,) = struct.unpack(">I", h)
    f = pb.Frame(); f.ParseFromString(i.read(n))
    r = pb.Frame(); r.result.id = f.call.id; r.result.ok.CopyFrom(f.call.args.entries[0].value)
    d = r.SerializeToString(); o.write(struct.pack(">I", len(d)) + d)
"""

proto_port =
  Port.open({:spawn_executable, System.find_executable(python)}, [
    :binary,
    :nouse_stdio,
    {:packet, 4},
    args: ["-u", "-c", proto_loop],
    env: [{~c"PYTHONPATH", String.to_charlist(Path.expand("priv/python"))}]
  ])

{:ok, call_frame} =
  DSPex.Bridge.Native.bridge_encode({:call, 1, "echo", %{value: 1}, "bench_python", 5_000})

proto =
  Bench.latencies(n, fn ->
    Port.command(proto_port, call_frame)
    receive do: ({^proto_port, {:data, _}} -> :ok)
  end)

# The SDK's own worker driven straight from this process (no pool, no worker process, no
# breaker): what the Python side costs on top of the protocol floor.
sdk_port =
  Port.open({:spawn_executable, System.find_executable(python)}, [
    :binary,
    :nouse_stdio,
    {:packet, 4},
    args: ["-u", "-m", "dspex_bridge.worker", "--module", "fault_tools"],
    env: [{~c"PYTHONPATH", String.to_charlist(Enum.join([Path.expand("priv/python"), tools], ":"))}]
  ])

receive do: ({^sdk_port, {:data, _hello}} -> :ok)

sdk =
  Bench.latencies(n, fn ->
    Port.command(sdk_port, call_frame)
    receive do: ({^sdk_port, {:data, _}} -> :ok)
  end)

IO.puts(
  "Python bridge round trips (#{System.schedulers_online()} schedulers on " <>
    "#{:erlang.system_info(:logical_processors_available)} CPUs, #{n} calls each)"
)

port_floor = Bench.row("raw Port {:packet, 4} echo to a bare Python loop (local floor)", raw)
proto_floor = Bench.row("  the same with the protocol's frames parsed and answered", proto)
Bench.ratio("  ratio of the protocol floor to the local floor", proto_floor, port_floor)
Bench.row("  the SDK's worker, its Port owned by the caller (no pool)", sdk)

{out, 0} = System.cmd(python, [Path.expand("benches/support/grpc_pingpong.py"), "#{n}"])
[g50, g99] = out |> String.split() |> Enum.map(&String.to_float/1)

Bench.line(
  "raw grpcio stream ping-pong, Python to Python (remote floor)",
  "p50 #{g50} us  p99 #{g99} us"
)

grpc_floor = g50 * 1000

{:ok, s} = SessionStore.create_session("bench_python")
{:ok, _} = SessionStore.register_variable(s, :temperature, :float, 0.5)
:ok = RateLimiter.start_limiter(:bench_limit, capacity: 1_000_000_000, per_second: 1_000_000_000)
token = Base.encode16(:crypto.strong_rand_bytes(16))

# Remote workers: `python -m dspex_bridge.worker --connect`, started here as OS processes.
start_remote = fn pool, count ->
  {host, port} = PythonWorker.listen_address()
  path = Enum.join([Path.expand("priv/python"), tools], ":")
  env = [{~c"PYTHONPATH", ~c"#{path}"}, {~c"DSPEX_BRIDGE_TOKEN", ~c"#{token}"}]

  args =
    ["-m", "dspex_bridge.worker", "--connect", "#{host}:#{port}", "--pool", "#{pool}"] ++
      ["--module", "fault_tools"]

  for _ <- 1..count do
    p =
      Port.open({:spawn_executable, System.find_executable(python)}, [:binary, args: args, env: env])

    {:os_pid, os} = Port.info(p, :os_pid)
    os
  end
end

for {carrier, size} <- [{:local, 1}, {:local, 4}, {:remote, 1}, {:remote, 4}] do
  pool = :"bench_#{carrier}_#{size}"
  opts = [modules: ["fault_tools"], python_path: [tools]]

  remote_pids =
    case carrier do
      :local ->
        {:ok, _} = PythonWorker.start_pool(pool, [size: size] ++ opts)
        []

      :remote ->
        {:ok, _} = PythonWorker.start_pool(pool, [size: 0, accept_remote: [token: token]] ++ opts)
        os_pids = start_remote.(pool, size)

        Enum.find(1..400, fn _ ->
          length(PythonWorker.workers(pool)) == size or (Process.sleep(25) && false)
        end)

        os_pids
    end

  :ok = CircuitBreaker.start_breaker(pool, failure_threshold: 1_000_000)
  floor = if carrier == :local, do: port_floor, else: grpc_floor
  goal = if carrier == :local, do: "goal <= 1.2", else: "goal <= 1.0"

  call = fn ->
    {:ok, 1} = Python.call(s, "echo", %{value: 1}, pool: pool, rate_limit: :bench_limit)
  end

  for _ <- 1..1_000, do: call.()
  p50 = Bench.row("full stack echo, #{carrier}, #{size} worker(s)", Bench.latencies(n, call))
  Bench.ratio("  ratio to the #{carrier} floor (#{goal})", p50, floor)
  Bench.line("  added to the floor per call", "#{Float.round((p50 - floor) / 1000, 1)} us")

  if carrier == :local do
    Bench.ratio("  ratio to the protocol floor", p50, proto_floor)

    # The pool's call alone (no rate limit, breaker or analytics): what Python.call/4 adds.
    # One worker only: without a session, calls go round robin over the workers.
    if size == 1 do
      pool_call = fn -> {:ok, 1} = PythonWorker.call(pool, "echo", %{value: 1}) end
      Bench.row("  the pool's call alone (PythonWorker.call/4)", Bench.latencies(n, pool_call))
    end

    # The machine's noise moves the floor from run to run: the same ratio again, with the
    # floor and the full stack measured in alternating rounds of 500 calls. On a guest whose
    # idle CPUs halt, each side falls into a slow wakeup mode of its own accord (see
    # BENCHMARKS.md); run the bench under `taskset -c 0` to compare the work alone.
    rounds =
      for _ <- 1..10 do
        f = Bench.percentile(Bench.latencies(500, bare_echo), 0.5)
        c = Bench.percentile(Bench.latencies(500, call), 0.5)
        c / f
      end

    ratio = Enum.at(Enum.sort(rounds), 5)

    Bench.line(
      "  ratio to the local floor, median of 10 alternating rounds",
      :erlang.float_to_binary(ratio, decimals: 2)
    )
  end

  if carrier == :remote do
    # As for local: the remote floor and the stack in alternating rounds of 500 calls, the
    # ping-pong's stream held open between its rounds.
    pingpong =
      Port.open({:spawn_executable, System.find_executable(python)}, [
        :binary,
        {:line, 64},
        args: [Path.expand("benches/support/grpc_pingpong.py"), "--rounds"]
      ])

    floor_round = fn ->
      Port.command(pingpong, "500\n")

      receive do
        {^pingpong, {:data, {:eol, us}}} -> String.to_float(us) * 1000
      after
        60_000 -> raise "the grpcio ping-pong did not answer"
      end
    end

    rounds =
      for _ <- 1..10 do
        f = floor_round.()
        c = Bench.percentile(Bench.latencies(500, call), 0.5)
        c / f
      end

    Port.close(pingpong)

    Bench.line(
      "  ratio to the remote floor, median of 10 alternating rounds",
      :erlang.float_to_binary(Enum.at(Enum.sort(rounds), 5), decimals: 2)
    )
  end

  # Throughput: sessionless calls spread over the workers by 64 callers.
  spread = fn -> {:ok, 1} = PythonWorker.call(pool, "echo", %{value: 1}) end
  for _ <- 1..1_000, do: spread.()
  goal = if carrier == :local and size == 4, do: " (goal 40,000)", else: ""

  Bench.throughput(
    "echo throughput, #{carrier}, #{size} worker(s), 64 callers#{goal}",
    40_000,
    64,
    spread
  )

  if size == 1 do
    read = fn -> {:ok, _} = Python.call(s, "read", %{name: "temperature"}, pool: pool) end
    for _ <- 1..500, do: read.()
    with_read = Bench.latencies(2_000, read)
    echo = Bench.latencies(2_000, call)
    p = Bench.percentile(with_read, 0.5) - Bench.percentile(echo, 0.5)

    Bench.line(
      "ctx.get_variable round trip inside a tool, #{carrier}",
      "p50 #{Float.round(p / 1000, 1)} us"
    )

    Bench.ratio("  ratio to the #{carrier} floor", p, floor)
  end

  PythonWorker.stop_pool(pool)
  for os <- remote_pids, do: System.cmd("kill", ["-9", "#{os}"])
end
