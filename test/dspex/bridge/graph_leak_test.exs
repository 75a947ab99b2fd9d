defmodule DSPex.Bridge.GraphLeakTest do
  # Not async: it counts live graph resources in the whole VM.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{DependencyManager, Native, SessionStore}

  test "deleting sessions frees their graphs" do
    :erlang.garbage_collect()
    before = Native.graph_live_count()

    ids =
      for _ <- 1..50 do
        s = unique_id()
        {:ok, _} = SessionStore.create_session(s)
        for v <- [:a, :b], do: {:ok, _} = SessionStore.register_variable(s, v, :integer, 1)
        :ok = DependencyManager.add_dependency(s, :a, :b)
        s
      end

    assert Native.graph_live_count() >= before + 50
    for s <- ids, do: :ok = SessionStore.delete_session(s)
    # The graph refs lived in ETS and the session processes; both are gone now.
    eventually(fn ->
      for pid <- Process.list(), do: :erlang.garbage_collect(pid)
      Native.graph_live_count() <= before
    end)
  end
end
