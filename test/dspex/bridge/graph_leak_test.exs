defmodule DSPex.Bridge.GraphLeakTest do
  # Not async: it counts live graph resources in the whole VM.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{DependencyManager, Native, SessionStore}

  defp collect_everything do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    :ok
  end

  test "deleting sessions frees their graphs" do
    # Graphs of sessions other tests deleted may still sit in some heap, and sessions with
    # short TTLs may expire meanwhile: the count can only fall by those, so deleting ours
    # must take it at least 50 below what it was with them alive.
    collect_everything()

    ids =
      for _ <- 1..50 do
        s = unique_id()
        {:ok, _} = SessionStore.create_session(s)
        for v <- [:a, :b], do: {:ok, _} = SessionStore.register_variable(s, v, :integer, 1)
        :ok = DependencyManager.add_dependency(s, :a, :b)
        s
      end

    created = Native.graph_live_count()
    assert created >= 50
    for s <- ids, do: :ok = SessionStore.delete_session(s)
    # The graph refs lived in the NIF's directory and the session processes; both are gone.
    eventually(fn ->
      collect_everything()
      Native.graph_live_count() <= created - 50
    end)
  end
end
