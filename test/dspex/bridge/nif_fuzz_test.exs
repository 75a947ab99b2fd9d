defmodule DSPex.Bridge.NifFuzzTest do
  @moduledoc """
  Every raw NIF given random terms (and real resources beside them), one VM per batch: a
  segfault or an abort shows as the batch's exit status. Zero VM deaths and zero panics.
  """
  use ExUnit.Case, async: true

  alias DSPex.Bridge.NifFuzz

  @batches 12
  @calls 20_000

  @tag timeout: 600_000
  test "no NIF crashes the VM or panics on any term" do
    base = System.unique_integer([:positive])

    results =
      (base + 1)..(base + @batches)
      |> Task.async_stream(&{&1, NifFuzz.run_batch(&1, @calls)},
        max_concurrency: 2,
        timeout: :infinity
      )
      |> Enum.map(fn {:ok, result} -> result end)

    for {seed, {output, status}} <- results do
      lines = String.split(output, "\n", trim: true)
      failures = Enum.filter(lines, &String.starts_with?(&1, "FAILURE"))

      assert status == 0,
             "batch #{seed} ended with status #{status} (a VM death when 128+): last lines\n" <>
               Enum.join(Enum.take(lines, -5), "\n") <>
               "\n" <> Enum.join(Enum.take(failures, 10), "\n")

      assert List.last(lines) =~
               ~r/^nif fuzz batch #{seed}: #{@calls} calls, \d+ answered, 0 failures$/
    end
  end
end
