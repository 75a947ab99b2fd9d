# Access-control benchmarks: `MIX_ENV=prod mix run benches/access_control.exs`.
# Baseline in the same run: a pure-Elixir evaluator of the same rules (the reference design:
# walk the rules, match the session pattern and conditions, highest priority wins, deny
# overrides), written here.
Code.require_file("bench_helper.exs", __DIR__)
alias DSPex.Bench
alias DSPex.Bridge.{AccessControl, SessionStore}

defmodule ElixirEvaluator do
  # Rules are pre-compiled the way an Elixir implementation would keep them.
  def compile(rules) do
    Enum.map(rules, fn r ->
      pattern =
        case r.session_pattern do
          {:glob, g} ->
            {:regex, Regex.compile!("^" <> String.replace(Regex.escape(g), "\\*", ".*") <> "$")}

          {:exact, s} ->
            {:exact, s}
        end

      %{r | session_pattern: pattern}
    end)
  end

  def allowed?(rules, session, permission, context) do
    rules
    |> Enum.filter(fn r ->
      permission in implied(r.permissions) and matches?(r.session_pattern, session) and
        Enum.all?(r.conditions, fn {k, c} -> holds?(c, Map.get(context, k)) end)
    end)
    |> case do
      [] ->
        false

      matching ->
        top = matching |> Enum.map(& &1.priority) |> Enum.max()
        not Enum.any?(matching, &(&1.priority == top and &1.effect == :deny))
    end
  end

  defp implied(perms) do
    Enum.flat_map(perms, fn
      :optimize -> [:optimize, :write, :read]
      :write -> [:write, :read]
      :observe -> [:observe, :read]
      :read -> [:read]
    end)
  end

  defp matches?({:exact, s}, session), do: s == session
  defp matches?({:regex, re}, session), do: Regex.match?(re, session)
  defp holds?(_c, nil), do: false
  defp holds?({:in, list}, v), do: v in list
  defp holds?({:gte, n}, v), do: is_number(v) and v >= n
end

IO.puts("Access control (#{System.schedulers_online()} schedulers)")
{:ok, s} = SessionStore.create_session("acl_bench", ttl: :infinity)

make_rules = fn n ->
  # n - 1 rules for other teams, then the one that grants the caller read access.
  others =
    for i <- 1..(n - 1) do
      %{
        id: "team_#{i}",
        session_pattern: {:glob, "team_#{i}_*"},
        permissions: [:write],
        effect: :allow,
        priority: rem(i, 3),
        conditions: %{role: {:in, ["dev", "ops"]}}
      }
    end

  others ++
    [
      %{
        id: "readers",
        session_pattern: {:glob, "reader_*"},
        permissions: [:read],
        effect: :allow,
        priority: 0,
        conditions: %{level: {:gte, 2}}
      }
    ]
end

ctx = %{role: "dev", level: 3}

for n <- [10, 100, 1_000] do
  rules = make_rules.(n)
  {:ok, _} = SessionStore.register_variable(s, "v#{n}", :integer, 0, access_rules: rules)
  compiled = ElixirEvaluator.compile(rules)
  true = ElixirEvaluator.allowed?(compiled, "reader_1", :read, ctx)
  :ok = AccessControl.check_permission({s, "v#{n}"}, "reader_1", :read, ctx)
  {:ok, %{allowed: true}} = AccessControl.explain({s, "v#{n}"}, "reader_1", :read, ctx)
  iterations = div(200_000, n) + 1_000

  [{_, elixir}, {_, uncached}, {_, cached}] =
    Bench.compare(
      [
        {:elixir, fn -> ElixirEvaluator.allowed?(compiled, "reader_1", :read, ctx) end},
        {:uncached, fn -> AccessControl.explain({s, "v#{n}"}, "reader_1", :read, ctx) end},
        {:cached, fn -> AccessControl.check_permission({s, "v#{n}"}, "reader_1", :read, ctx) end}
      ],
      iterations
    )

  ratio = fn a, b -> :io_lib.format("~.1fx", [a / b]) |> to_string() end
  Bench.row("#{n} rules: pure-Elixir evaluator", Bench.fmt(elixir))

  Bench.row(
    "#{n} rules: engine uncached (explain/4)",
    Bench.fmt(uncached) <> "  (#{ratio.(elixir, uncached)} faster)"
  )

  Bench.row(
    "#{n} rules: engine cached (check_permission/4)",
    Bench.fmt(cached) <> "  (#{ratio.(elixir, cached)} faster)"
  )
end

{:ok, _} =
  SessionStore.register_variable(s, :hot, :integer, 0,
    access_rules: [[id: "r", session_pattern: "reader_*", permissions: [:read]]]
  )

empty = %{}

[{_, nif}, {_, api}] =
  Bench.compare(
    [
      {:nif, fn -> DSPex.Bridge.Native.acl_check(s, :hot, "reader_1", :read, empty) end},
      {:api, fn -> AccessControl.check_permission({s, :hot}, "reader_1", :read) end}
    ],
    500_000
  )

Bench.row("cached decision, raw NIF call", Bench.fmt(nif))
Bench.row("cached decision, check_permission/4 (goal < 150 ns)", Bench.fmt(api))
