# The Redis backend against the server it runs on: `make bench` or
# `MIX_ENV=prod mix run benches/redis_backend.exs`. Starts its own redis-server (Debian's) on
# a free loopback port, without persistence, and measures in the same run:
#   * redis-benchmark's SET and GET (1 and 16 connections): the server's own floor;
#   * update_variable / get_variable on a Redis session (1 and 16 callers: the backend has
#     one multiplexed connection);
#   * get_variable on a local session, and on a Redis session from this node's read cache
#     and on a cache miss (the copy dropped before each read, as a change elsewhere does);
#   * an optimizer lock's acquire + release against a raw SET NX PX + DEL pair sent by the
#     same client from the same VM.
Code.require_file("bench_helper.exs", __DIR__)
alias DSPex.Bench
alias DSPex.Bridge.{OptimizerCoordinator, Redis, SessionStore}
alias DSPex.Bridge.SessionStore.RedisBackend

exe = System.find_executable("redis-server") || raise "redis-server is not installed"
{:ok, probe} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
{:ok, port} = :inet.port(probe)
:gen_tcp.close(probe)

dir = Path.join(System.tmp_dir!(), "dspex_redis_bench_#{System.unique_integer([:positive])}")
File.mkdir_p!(dir)

server =
  Port.open({:spawn_executable, "/bin/sh"}, [
    :binary,
    args: [
      "-c",
      "#{exe} --port #{port} --bind 127.0.0.1 --dir #{dir} --save '' --appendonly no " <>
        ">#{dir}/log 2>&1 & pid=$!; read _; kill -9 $pid 2>/dev/null"
    ]
  ])

url = "redis://127.0.0.1:#{port}/0"

wait_up = fn wait_up, tries ->
  case Redis.connect(url) do
    {:ok, conn} -> conn
    {:error, _} when tries > 0 -> Process.sleep(50) && wait_up.(wait_up, tries - 1)
  end
end

raw = wait_up.(wait_up, 100)

IO.puts("Redis backend (#{System.schedulers_online()} schedulers, OTP #{System.otp_release()})")

benchmark = fn tests, clients, requests ->
  {out, 0} =
    System.cmd("redis-benchmark", [
      "-p",
      "#{port}",
      "-t",
      tests,
      "-n",
      "#{requests}",
      "-c",
      "#{clients}",
      "-q",
      "--csv"
    ])

  for line <- String.split(out, "\n", trim: true),
      [name, rps | _] = line |> String.replace("\"", "") |> String.split(","),
      name in ["SET", "GET"],
      into: %{},
      do: {name, String.to_float(rps)}
end

{:ok, _} = RedisBackend.start_link(url: url)
{:ok, s} = SessionStore.create_session("bench_redis", backend: :redis, ttl: :infinity)
{:ok, _} = SessionStore.register_variable(s, :x, :float, 0.5)
{:ok, local} = SessionStore.create_session("bench_local", ttl: :infinity)
{:ok, _} = SessionStore.register_variable(local, :x, :float, 0.5)

# ops/s of `fun` run `n` times by each of `callers` processes at once.
throughput = fn fun, n, callers ->
  {us, _} =
    :timer.tc(fn ->
      1..callers
      |> Enum.map(fn _ -> Task.async(fn -> Bench.loop(fun, n) end) end)
      |> Enum.each(&Task.await(&1, :infinity))
    end)

  n * callers / (us / 1_000_000)
end

write = fn -> {:ok, _} = SessionStore.update_variable(s, :x, :rand.uniform()) end
read = fn -> {:ok, _} = SessionStore.get_variable(s, :x) end

# The server's speed drifts on a shared machine: rounds alternate redis-benchmark and the
# backend, and each figure is the median of the rounds.
rounds = 5
median = fn xs -> xs |> Enum.sort() |> Enum.at(div(length(xs), 2)) end
fmt2 = fn x -> :io_lib.format("~.2f", [x]) |> to_string() end

for clients <- [1, 16] do
  {requests, n} = if clients == 1, do: {20_000, 5_000}, else: {100_000, 2_000}

  samples =
    for _ <- 1..rounds do
      floor = benchmark.("set,get", clients, requests)
      {floor, throughput.(write, n, clients), throughput.(read, n * 20, clients)}
    end

  set = median.(Enum.map(samples, fn {f, _, _} -> f["SET"] end))
  get = median.(Enum.map(samples, fn {f, _, _} -> f["GET"] end))
  writes = median.(Enum.map(samples, &elem(&1, 1)))
  reads = median.(Enum.map(samples, &elem(&1, 2)))
  # Per round, so that a slow moment of the machine weighs on both sides.
  ratios = Enum.map(samples, fn {f, w, _} -> w / (f["SET"] / clients) end)
  per_conn = median.(ratios)
  total = median.(Enum.map(samples, fn {f, w, _} -> w / f["SET"] end))

  Bench.row("redis-benchmark SET, #{clients} conn (median of #{rounds})", "#{round(set)} ops/s")
  Bench.row("update_variable (Redis), #{clients} callers", "#{round(writes)} ops/s")
  # The backend's callers share one connection; redis-benchmark opens `clients`.
  Bench.row("  ratio per connection, update / SET (goal >= 0.50)", fmt2.(per_conn))
  Bench.row("    per round", Enum.map_join(ratios, " ", fmt2))
  Bench.row("  ratio in total, update / SET", fmt2.(total))
  Bench.row("redis-benchmark GET, #{clients} conn", "#{round(get)} ops/s")
  Bench.row("get_variable (Redis, cached), #{clients} callers", "#{round(reads)} ops/s")
  Bench.row("  ratio get / GET", fmt2.(reads / get))
end

cache = RedisBackend.lookup().cache

[{_, local_read}, {_, cached_read}, {_, missed_read}] =
  Bench.compare(
    [
      {:local, fn -> SessionStore.get_variable(local, :x) end},
      {:cached, fn -> SessionStore.get_variable(s, :x) end},
      {:miss,
       fn ->
         DSPex.Bridge.SessionStore.RedisBackend.ReadCache.invalidate(cache, s)
         SessionStore.get_variable(s, :x)
       end}
    ],
    5_000
  )

Bench.row("get_variable, local session", Bench.fmt(local_read))
Bench.row("get_variable, Redis session, cached", Bench.fmt(cached_read))
Bench.row("get_variable, Redis session, cache miss", Bench.fmt(missed_read))

Bench.row(
  "  ratio cached Redis / local read (goal <= 2.0)",
  :io_lib.format("~.2f", [cached_read / local_read]) |> to_string()
)

Bench.row(
  "  ratio cache miss / cached read",
  :io_lib.format("~.1f", [missed_read / cached_read]) |> to_string()
)

me = self()

lock_cycle = fn ->
  {:ok, _} = OptimizerCoordinator.acquire_lock(:x, "bench", me, session_id: s)
  :ok = OptimizerCoordinator.release_lock(:x, "bench", session_id: s)
end

raw_cycle = fn ->
  {:ok, :ok} = Redis.command(raw, ["SET", "bench_lock", "holder", "NX", "PX", "30000"])
  {:ok, 1} = Redis.command(raw, ["DEL", "bench_lock"])
end

[{_, raw_ns}, {_, lock_ns}] = Bench.compare([{:raw, raw_cycle}, {:lock, lock_cycle}], 5_000)
Bench.row("raw SET NX PX + DEL (same client)", Bench.fmt(raw_ns))
Bench.row("acquire_lock + release_lock (Redis session)", Bench.fmt(lock_ns))

Bench.row(
  "  ratio raw / lock cycle (goal >= 0.50)",
  :io_lib.format("~.2f", [raw_ns / lock_ns]) |> to_string()
)

SessionStore.delete_session(s)
Port.close(server)
File.rm_rf!(dir)
