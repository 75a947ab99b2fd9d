# HA benchmarks over loopback: `MIX_ENV=prod mix run benches/ha.exs`.
#
# Two peer nodes on 127.0.0.1 (started here) run dspex_bridge; this node only drives them.
# - Migration of a 10,000-variable session back and forth (checkpoint, transfer, verify,
#   switch, clean up), median of 10 moves after one warm-up move each way.
# The three VMs share this host's cores: run this node without idle spinning too, as
# `make bench` does (`elixir --erl "+sbwt none ..." -S mix run`).
# - The cost per write of replication: the same 5,000 writes on the owner with no replica,
#   with one :sync replica and with one :async replica (written on the owner itself, so no
#   network round trip per write is counted except the replication's own).
Code.require_file("bench_helper.exs", __DIR__)
alias DSPex.Bench
alias DSPex.Bridge.{HAManager, SessionStore}
alias DSPex.Bridge.HAManager.LocalCluster

:ok = LocalCluster.ensure_distributed(:dspex_ha_bench)
{:ok, [a, b]} = LocalCluster.start_peers(["bench_a", "bench_b"])
call = fn node, mod, fun, args -> :erpc.call(node, mod, fun, args, 120_000) end

IO.puts("== migration of a 10,000-variable session over loopback ==")
id = "migrating"
{:ok, _} = call.(a, SessionStore, :create_session, [id, []])

for i <- 1..10_000,
    do: {:ok, _} = call.(a, SessionStore, :register_variable, [id, "v#{i}", :integer, i])

{:ok, _} = call.(a, HAManager, :register_session, [id])

# One move there and back first: the first transfer of this size allocates the carriers
# and distribution buffers every later one reuses.
for {from, to} <- [{a, b}, {b, a}],
    do: {:ok, _} = call.(from, HAManager, :migrate_session, [id, to])

moves =
  for {from, to} <- List.duplicate([{a, b}, {b, a}], 5) |> List.flatten() do
    {:ok, info} = call.(from, HAManager, :migrate_session, [id, to])
    info
  end

ms = moves |> Enum.map(& &1.duration_ms) |> Enum.sort()
Bench.row("migrate_session/2, 10,000 variables (median of 10)", "#{Bench.median(ms)} ms")
Bench.row("  fastest / slowest", "#{hd(ms)} ms / #{List.last(ms)} ms")
Bench.row("  all moves", Enum.map_join(Enum.map(moves, & &1.duration_ms), " ", &"#{&1}"))
Bench.row("  snapshot envelope", "#{hd(moves).bytes} bytes")

IO.puts("\n== cost per write of replication (5,000 writes on the owner) ==")
writes = 5_000

per_write = fn session ->
  {:ok, owner} = call.(a, HAManager, :get_session_owner, [session])
  # Warm up, then time.
  {:ok, _} = LocalCluster.write_sequence(owner, session, "x", 1..500)
  {us, {:ok, _}} = :timer.tc(fn -> LocalCluster.write_sequence(owner, session, "x", 1..writes) end)
  us * 1000 / writes
end

new_session = fn name ->
  {:ok, _} = call.(a, SessionStore, :create_session, [name, []])
  {:ok, _} = call.(a, SessionStore, :register_variable, [name, "x", :integer, 0])
  {:ok, _} = call.(a, HAManager, :register_session, [name])
  name
end

:ok = call.(a, HAManager, :configure, [[replicas: 0]])
plain = new_session.("no_replica")
:ok = call.(a, HAManager, :configure, [[replicas: 1, replication: :sync]])
replicated = new_session.("one_replica")

rounds =
  for _ <- 1..3 do
    :ok = call.(a, HAManager, :configure, [[replication: :sync]])
    none = per_write.(plain)
    sync = per_write.(replicated)
    :ok = call.(a, HAManager, :configure, [[replication: :async]])
    async = per_write.(replicated)
    {none, sync, async}
  end

none = rounds |> Enum.map(&elem(&1, 0)) |> Bench.median()
sync = rounds |> Enum.map(&elem(&1, 1)) |> Bench.median()
async = rounds |> Enum.map(&elem(&1, 2)) |> Bench.median()
Bench.row("update_variable, no replica", Bench.fmt(none))

Bench.row(
  "update_variable, one :sync replica",
  "#{Bench.fmt(sync)}  (+#{Bench.fmt(sync - none)} a write)"
)

Bench.row(
  "update_variable, one :async replica",
  "#{Bench.fmt(async)}  (+#{Bench.fmt(async - none)} a write)"
)

LocalCluster.stop_peers([a, b])
