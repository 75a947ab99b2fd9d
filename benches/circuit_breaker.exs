# Circuit breaker benchmarks: `MIX_ENV=prod mix run benches/circuit_breaker.exs`.
# Baselines in the same run, written here: a GenServer breaker (the reference design: every
# allow and record is a call to one process) and an ETS breaker in the style of :fuse
# (state in an ETS row, counters updated with :ets.update_counter).
Code.require_file("bench_helper.exs", __DIR__)
alias DSPex.Bench
alias DSPex.Bridge.{CircuitBreaker, Native}

defmodule GenServerBreaker do
  use GenServer
  def start_link, do: GenServer.start_link(__MODULE__, %{state: :closed, failures: 0})
  def allow(pid), do: GenServer.call(pid, :allow)
  def record(pid, outcome), do: GenServer.call(pid, {:record, outcome})
  def init(s), do: {:ok, s}
  def handle_call(:allow, _from, s), do: {:reply, s.state != :open, s}

  def handle_call({:record, :failure}, _from, s) do
    failures = s.failures + 1
    {:reply, :ok, %{s | failures: failures, state: if(failures >= 5, do: :open, else: s.state)}}
  end

  def handle_call({:record, :success}, _from, s), do: {:reply, :ok, %{s | failures: 0}}
end

defmodule EtsBreaker do
  @table :bench_ets_breaker
  def new,
    do:
      :ets.new(@table, [:named_table, :public, write_concurrency: true]) &&
        :ets.insert(@table, {:b, :closed, 0})

  def allow, do: :ets.lookup_element(@table, :b, 2) != :open
  def record(:success), do: :ets.update_element(@table, :b, {3, 0})

  def record(:failure) do
    if :ets.update_counter(@table, :b, {3, 1}) >= 5, do: :ets.update_element(@table, :b, {2, :open})
  end
end

{:ok, gs} = GenServerBreaker.start_link()
EtsBreaker.new()
:ok = CircuitBreaker.start_breaker(:bench, failure_threshold: 5)
[{_, handle, _, _}] = :ets.lookup(:dspex_bridge_breakers, :bench)

nif_pair = fn ->
  {:ok, gen, probe, _} = Native.breaker_allow(handle)
  Native.breaker_record(handle, gen, probe, :success, 1_000)
end

results =
  Bench.compare(
    [
      {:genserver, fn -> GenServerBreaker.allow(gs) && GenServerBreaker.record(gs, :success) end},
      {:ets_fuse_style, fn -> EtsBreaker.allow() && EtsBreaker.record(:success) end},
      {:nif_allow_record, nif_pair},
      {:call_noop, fn -> CircuitBreaker.call(:bench, fn -> :ok end) end}
    ],
    300_000
  )

[{_, genserver}, {_, ets}, {_, nif}, {_, call}] = results
ratio = fn a, b -> :io_lib.format("~.1fx", [a / b]) |> to_string() end
Bench.row("GenServer breaker allow+record (baseline)", Bench.fmt(genserver))
Bench.row("ETS breaker allow+record, :fuse style (baseline)", Bench.fmt(ets))
Bench.row("NIF breaker allow+record (goal < 200 ns)", Bench.fmt(nif))
Bench.row("CircuitBreaker.call/3 around a no-op function", Bench.fmt(call))
Bench.row("NIF vs GenServer", ratio.(genserver, nif))
Bench.row("NIF vs ETS", ratio.(ets, nif))

# Rejection latency while open.
:ok = CircuitBreaker.force_open(:bench)
ns = Bench.ns_per_call(fn -> CircuitBreaker.call(:bench, fn -> :ok end) end, 300_000)
Bench.row("rejected call while open (goal < 100 us)", Bench.fmt(ns))
