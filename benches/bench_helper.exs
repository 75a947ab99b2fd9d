defmodule DSPex.Bench do
  @moduledoc false
  # Plain timing helpers for the Elixir benches (no Benchee: the project has no hex deps).
  # Every comparison runs the baseline and the candidate in the same VM, interleaved over
  # several rounds, and reports the median of the rounds.

  @doc "Median nanoseconds per call of `fun` over `n` calls, over `rounds` rounds."
  def ns_per_call(fun, n, rounds \\ 7) do
    loop(fun, div(n, 10))

    1..rounds
    |> Enum.map(fn _ ->
      {us, _} = :timer.tc(fn -> loop(fun, n) end)
      us * 1000 / n
    end)
    |> median()
  end

  @doc "Interleaved medians for a list of `{label, fun}`; returns `[{label, ns}]`."
  def compare(cases, n, rounds \\ 7) do
    Enum.each(cases, fn {_, f} -> loop(f, div(n, 10)) end)

    samples =
      for _ <- 1..rounds, {label, f} <- cases, reduce: %{} do
        acc ->
          {us, _} = :timer.tc(fn -> loop(f, n) end)
          Map.update(acc, label, [us * 1000 / n], &[us * 1000 / n | &1])
      end

    Enum.map(cases, fn {label, _} -> {label, median(samples[label])} end)
  end

  def loop(_fun, 0), do: :ok

  def loop(fun, n) do
    fun.()
    loop(fun, n - 1)
  end

  def median(xs) do
    sorted = Enum.sort(xs)
    Enum.at(sorted, div(length(sorted), 2))
  end

  def fmt(ns) when ns >= 1_000_000, do: :io_lib.format("~.2f ms", [ns / 1_000_000]) |> to_string()
  def fmt(ns) when ns >= 1_000, do: :io_lib.format("~.2f us", [ns / 1_000]) |> to_string()
  def fmt(ns), do: "#{round(ns)} ns"

  def row(label, value), do: IO.puts(String.pad_trailing(label, 58) <> value)
end
