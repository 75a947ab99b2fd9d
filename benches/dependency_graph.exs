# Dependency graph benchmarks: `MIX_ENV=prod mix run benches/dependency_graph.exs [n m]`.
# Baseline in the same run: OTP's :digraph with [:acyclic], which searches everything
# reachable from the new edge's head on every insert.
Code.require_file("bench_helper.exs", __DIR__)
alias DSPex.Bench
alias DSPex.Bridge.{DependencyManager, SessionStore}

# Arguments: variables, edges, cluster size. Default: 100,000 variables and 300,000 edges
# in pipelines of 100 variables (what :digraph handles at about 10 us per edge). A cluster
# size equal to the variable count gives one connected DAG, where reachable sets are large
# and :digraph's per-insert search is far slower (use smaller n, m there).
{n, m, cluster} =
  case System.argv() do
    [n, m, c] -> {String.to_integer(n), String.to_integer(m), String.to_integer(c)}
    [n, m] -> {String.to_integer(n), String.to_integer(m), 100}
    _ -> {100_000, 300_000, 100}
  end

IO.puts(
  "Dependency graph: #{n} variables, #{m} edges, clusters of #{cluster}, hidden topological order"
)

:rand.seed(:exsss, {7, 11, 13})

# A hidden order: a random permutation gives each variable a rank; every edge goes from a
# lower to a higher rank inside one cluster of consecutive ranks; variables are registered
# in an unrelated shuffled order.
name = fn i -> "v#{i}" end
by_rank = Enum.shuffle(1..n) |> Enum.with_index(0) |> Map.new(fn {v, r} -> {r, name.(v)} end)

edges =
  Stream.repeatedly(fn ->
    base = :rand.uniform(div(n, cluster)) * cluster - cluster
    [a, b] = Enum.sort([:rand.uniform(cluster) - 1, :rand.uniform(cluster) - 1])
    {a + base, b + base}
  end)
  |> Stream.reject(fn {a, b} -> a == b end)
  |> Stream.uniq()
  |> Stream.map(fn {a, b} -> {by_rank[a], by_rank[b]} end)
  |> Enum.take(m)

new_session = fn id ->
  {:ok, s} = SessionStore.create_session(id, ttl: :infinity, max_variables: n + 10)

  for i <- Enum.shuffle(1..n),
      do: {:ok, _} = SessionStore.register_variable(s, name.(i), :integer, 0)

  s
end

s = new_session.("graph_bench")

{nif_us, _} =
  :timer.tc(fn -> for {a, b} <- edges, do: :ok = DependencyManager.add_dependency(s, a, b) end)

g = :digraph.new([:acyclic])
for i <- 1..n, do: :digraph.add_vertex(g, name.(i))
{dig_us, _} = :timer.tc(fn -> for {a, b} <- edges, do: [:"$e" | _] = :digraph.add_edge(g, a, b) end)

bulk = new_session.("graph_bench_bulk")
{bulk_us, {:ok, ^m}} = :timer.tc(fn -> DependencyManager.add_dependencies(bulk, edges) end)

ratio = fn a, b -> :io_lib.format("~.1fx", [a / b]) |> to_string() end

Bench.row(
  ":digraph [:acyclic] add_edge, #{m} edges",
  "#{Float.round(dig_us / 1.0e6, 2)} s (#{Float.round(dig_us / m, 2)} us/edge)"
)

Bench.row(
  "add_dependency/4, one call per edge",
  "#{Float.round(nif_us / 1.0e6, 2)} s (#{Float.round(nif_us / m, 2)} us/edge)"
)

Bench.row("add_dependencies/3, one bulk call", "#{Float.round(bulk_us / 1.0e6, 3)} s")
Bench.row("speed-up add_dependency vs :digraph (goal >= 20x)", ratio.(dig_us, nif_us))
Bench.row("speed-up bulk vs :digraph", ratio.(dig_us, bulk_us))

# get_update_order against the reference: :digraph reachability + topsort of the subgraph.
probes = edges |> Enum.take_random(200) |> Enum.map(&elem(&1, 0))

reference = fn v ->
  reach = :digraph_utils.reachable([v], g)
  sub = :digraph_utils.subgraph(g, reach)
  order = :digraph_utils.topsort(sub)
  :digraph.delete(sub)
  order
end

sizes = for v <- probes, do: length(elem(DependencyManager.get_update_order(s, v), 1))

IO.puts(
  "  (update-order probes: #{length(probes)} variables, median downstream #{Bench.median(sizes)})"
)

{ref_us, _} = :timer.tc(fn -> for v <- probes, do: reference.(v) end)

{ours_us, _} =
  :timer.tc(fn -> for v <- probes, do: {:ok, _} = DependencyManager.get_update_order(s, v) end)

Bench.row(
  "get_update_order, :digraph reachable+subgraph+topsort",
  Bench.fmt(ref_us * 1000 / length(probes))
)

Bench.row("get_update_order/3", Bench.fmt(ours_us * 1000 / length(probes)))
Bench.row("speed-up get_update_order vs :digraph reference", ratio.(ref_us, ours_us))
:digraph.delete(g)
for id <- [s, bulk], do: :ok = SessionStore.delete_session(id)

# A variable with exactly 1,000 downstream variables (a 10-wide, 100-deep lattice).
{:ok, t} = SessionStore.create_session("graph_bench_1000", ttl: :infinity)
{:ok, _} = SessionStore.register_variable(t, "root", :integer, 0)
layers = for l <- 1..100, do: for(k <- 1..10, do: "l#{l}_#{k}")
for layer <- layers, v <- layer, do: {:ok, _} = SessionStore.register_variable(t, v, :integer, 0)

lattice =
  [["root"] | layers]
  |> Enum.chunk_every(2, 1, :discard)
  |> Enum.flat_map(fn [up, down] -> for a <- up, b <- down, do: {a, b} end)

{:ok, _} = DependencyManager.add_dependencies(t, lattice)
{:ok, order} = DependencyManager.get_update_order(t, "root")
1001 = length(order)
ns = Bench.ns_per_call(fn -> DependencyManager.get_update_order(t, "root") end, 2_000)
Bench.row("get_update_order, 1,000 downstream (goal < 100 us)", Bench.fmt(ns))
:ok = SessionStore.delete_session(t)

# add_dependency on a 1,000-variable graph, from Elixir.
{:ok, u} = SessionStore.create_session("graph_bench_small", ttl: :infinity)
small = for i <- 1..1_000, do: "s#{i}"
for v <- small, do: {:ok, _} = SessionStore.register_variable(u, v, :integer, 0)
pairs = for _ <- 1..20_000, do: Enum.sort(Enum.take_random(1..1_000, 2))

{us, _} =
  :timer.tc(fn ->
    for [a, b] <- pairs, do: :ok = DependencyManager.add_dependency(u, "s#{a}", "s#{b}")
  end)

Bench.row(
  "add_dependency on a 1,000-variable graph (goal < 5 us)",
  Bench.fmt(us * 1000 / length(pairs))
)

:ok = SessionStore.delete_session(u)
