# SessionStore benchmarks: `make bench` or `MIX_ENV=prod mix run benches/session_store.exs`.
Code.require_file("bench_helper.exs", __DIR__)
alias DSPex.Bench
alias DSPex.Bridge.SessionStore

IO.puts("SessionStore (#{System.schedulers_online()} schedulers, OTP #{System.otp_release()})")

{:ok, s} = SessionStore.create_session("bench", ttl: :infinity)
for i <- 1..1_000, do: {:ok, _} = SessionStore.register_variable(s, "v#{i}", :float, 0.5)
{:ok, _} = SessionStore.register_variable(s, :temperature, :float, 0.7)
key = {s, :temperature}

[{_, base}, {_, get}] =
  Bench.compare(
    [
      {:ets, fn -> :ets.lookup(:dspex_bridge_variables, key) end},
      {:get, fn -> SessionStore.get_variable(s, :temperature) end}
    ],
    1_000_000
  )

Bench.row("bare :ets.lookup (baseline)", Bench.fmt(base))
Bench.row("get_variable/3", Bench.fmt(get))

Bench.row(
  "ratio get_variable / :ets.lookup (goal <= 1.5)",
  :io_lib.format("~.2f", [get / base]) |> to_string()
)

# update throughput: one session, then 8 sessions written in parallel.
n = 20_000

{us, _} =
  :timer.tc(fn ->
    for i <- 1..n, do: {:ok, _} = SessionStore.update_variable(s, :temperature, rem(i, 100) / 100)
  end)

one = n / (us / 1_000_000)
Bench.row("update_variable, 1 session, 1 writer", "#{round(one)} ops/s")

sessions =
  for k <- 1..8 do
    {:ok, id} = SessionStore.create_session("bench_#{k}", ttl: :infinity)
    {:ok, _} = SessionStore.register_variable(id, :x, :float, 0.0)
    id
  end

{us, _} =
  :timer.tc(fn ->
    sessions
    |> Enum.map(fn id ->
      Task.async(fn ->
        for i <- 1..n, do: {:ok, _} = SessionStore.update_variable(id, :x, i * 1.0)
      end)
    end)
    |> Enum.each(&Task.await(&1, :infinity))
  end)

eight = 8 * n / (us / 1_000_000)
Bench.row("update_variable, 8 sessions, 8 writers in parallel", "#{round(eight)} ops/s")

Bench.row(
  "parallel speed-up (8 sessions / 1 session)",
  :io_lib.format("~.2fx", [eight / one]) |> to_string()
)
