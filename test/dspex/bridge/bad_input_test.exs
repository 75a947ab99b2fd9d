defmodule DSPex.Bridge.BadInputTest do
  @moduledoc """
  Every public function given wrong terms: a documented `{:error, reason}` (or, for the NIF
  stubs, an ArgumentError), never a crash, and nothing stored changes.
  """
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{Native, SessionStore, Variable}

  @bad_ids [nil, 42, 1.5, "", :binary.copy("a", 256), {:tuple}, [:list], %{}, self()]

  setup do
    s = session!()
    {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1, constraints: [max: 10])
    {:ok, session: s}
  end

  defp unchanged!(s) do
    assert {:ok, %Variable{value: 1, version: 1}} = SessionStore.get_variable(s, :x)
    assert {:ok, [%{version: 1}]} = SessionStore.get_history(s, :x)
    assert {:ok, %{variable_count: 1}} = SessionStore.get_session(s)
  end

  test "bad session ids", %{session: s} do
    for bad <- @bad_ids, bad != nil or true do
      reason = {:invalid_session_id, bad}

      # nil and true/false are atoms, so they are well-formed ids of sessions that do not exist.
      expected = if is_atom(bad), do: :session_not_found, else: reason

      assert {:error, ^expected} = SessionStore.get_variable(bad, :x)
      assert {:error, ^expected} = SessionStore.update_variable(bad, :x, 1)
      assert {:error, ^expected} = SessionStore.register_variable(bad, :x, :integer, 1)
      assert {:error, ^expected} = SessionStore.list_variables(bad)
      assert {:error, ^expected} = SessionStore.get_history(bad, :x)
      assert {:error, ^expected} = SessionStore.rollback_variable(bad, :x, 1)
      assert {:error, ^expected} = SessionStore.delete_variable(bad, :x)
      assert {:error, ^expected} = SessionStore.update_variables(bad, %{x: 1})
      assert {:error, ^expected} = SessionStore.watch(bad, :x)
      assert {:error, ^expected} = SessionStore.export_session(bad)
      assert {:error, ^expected} = SessionStore.get_session(bad)
      assert {:error, ^expected} = SessionStore.delete_session(bad)

      unless is_atom(bad), do: assert({:error, ^reason} = SessionStore.create_session(bad))
    end

    unchanged!(s)
  end

  test "bad variable names", %{session: s} do
    for bad <- @bad_ids, not is_atom(bad) do
      assert {:error, {:invalid_name, ^bad}} = SessionStore.get_variable(s, bad)
      assert {:error, {:invalid_name, ^bad}} = SessionStore.register_variable(s, bad, :integer, 1)
      assert {:error, {:invalid_name, ^bad}} = SessionStore.update_variable(s, bad, 1)
      assert {:error, {:invalid_name, ^bad}} = SessionStore.get_history(s, bad)
      assert {:error, {:invalid_name, ^bad}} = SessionStore.rollback_variable(s, bad, 1)
      assert {:error, {:invalid_name, ^bad}} = SessionStore.delete_variable(s, bad)
      assert {:error, {:invalid_name, ^bad}} = SessionStore.watch(s, bad)
      assert {:error, {:invalid_name, ^bad}} = SessionStore.update_variables(s, [{bad, 1}])
    end

    unchanged!(s)
  end

  test "bad options", %{session: s} do
    assert {:error, {:invalid_option, {:unknown, :bogus}}} =
             SessionStore.get_variable(s, :x, bogus: 1)

    assert {:error, {:invalid_option, {:not_a_keyword_list, %{}}}} =
             SessionStore.get_variable(s, :x, %{})

    assert {:error, {:invalid_option, {:context, "ctx"}}} =
             SessionStore.get_variable(s, :x, context: "ctx")

    assert {:error, {:invalid_option, {:caller, 7}}} = SessionStore.get_variable(s, :x, caller: 7)

    assert {:error, {:invalid_option, {:timeout, -1}}} =
             SessionStore.update_variable(s, :x, 2, timeout: -1)

    assert {:error, {:invalid_option, {:expected_version, 0}}} =
             SessionStore.update_variable(s, :x, 2, expected_version: 0)

    assert {:error, {:invalid_option, {:expected_versions, [1]}}} =
             SessionStore.update_variables(s, %{x: 2}, expected_versions: [1])

    assert {:error, {:invalid_option, {:updates, :nope}}} = SessionStore.update_variables(s, :nope)
    assert {:error, {:invalid_option, {:updates, 5}}} = SessionStore.update_variables(s, [5])

    assert {:error, {:invalid_option, {:metadata, []}}} =
             SessionStore.update_variable(s, :x, 2, metadata: [])

    assert {:error, {:invalid_option, {:pid, :me}}} = SessionStore.watch(s, :x, pid: :me)
    assert {:error, {:invalid_option, {:ttl, 0}}} = SessionStore.create_session(unique_id(), ttl: 0)

    assert {:error, {:invalid_option, {:history_limit, 10_001}}} =
             SessionStore.create_session(unique_id(), history_limit: 10_001)

    assert {:error, {:invalid_option, [:not_a_pair]}} =
             SessionStore.create_session(unique_id(), [[:not_a_pair]])

    assert {:error, {:invalid_option, {:session_id, 3}}} =
             SessionStore.import_session("x", session_id: 3)

    unchanged!(s)
  end

  test "bad types, constraints and values", %{session: s} do
    assert {:error, {:invalid_type, :complex}} = SessionStore.register_variable(s, :y, :complex, 1)
    assert {:error, {:invalid_type, "float"}} = SessionStore.register_variable(s, :y, "float", 1)

    assert {:error, {:invalid_constraints, _}} =
             SessionStore.register_variable(s, :y, :float, 1.0, constraints: [min: "0"])

    assert {:error, {:invalid_value, {:expected, :float}}} =
             SessionStore.register_variable(s, :y, :float, :one)

    assert {:error, {:invalid_value, {:above_max, 10}}} = SessionStore.update_variable(s, :x, 11)
    assert {:error, {:variable_not_found, :y}} = SessionStore.get_variable(s, :y)
    unchanged!(s)
  end

  test "oversized batches are refused", %{session: s} do
    updates = for i <- 1..10_001, do: {"v#{i}", i}

    assert {:error, {:invalid_option, {:updates, {:too_many, 10_001, 10_000}}}} =
             SessionStore.update_variables(s, updates)

    unchanged!(s)
  end

  test "random terms never crash the store", %{session: s} do
    {:ok, _} = SessionStore.register_variable(s, :fuzz, :integer, 0)

    terms = [
      nil,
      0,
      -1,
      1.0e300,
      "",
      "x",
      :x,
      [],
      [1],
      [[]],
      {},
      {1, 2},
      %{},
      %{a: 1},
      self(),
      make_ref(),
      fn -> :ok end,
      <<1::1>>,
      [a: 1],
      [{:caller, 1}]
    ]

    for a <- terms, b <- terms do
      for result <- [
            SessionStore.get_variable(a, b),
            SessionStore.update_variable(s, :fuzz, a, opts_or_empty(b)),
            SessionStore.register_variable(s, a, b, a),
            SessionStore.update_variables(s, a, opts_or_empty(b)),
            SessionStore.rollback_variable(s, :fuzz, a),
            SessionStore.import_session(a, opts_or_empty(b))
          ] do
        assert match?({:error, _}, result) or match?({:ok, _}, result)
      end
    end

    # Writes went to :fuzz and random registrations; :x was never named.
    assert {:ok, %Variable{value: 1}} = SessionStore.get_variable(s, :x)
  end

  defp opts_or_empty(b) when is_list(b), do: b
  defp opts_or_empty(_), do: []

  test "random bytes never import" do
    for n <- [0, 1, 3, 19, 20, 21, 100, 5000] do
      bytes = :crypto.strong_rand_bytes(n)
      assert {:error, {:invalid_snapshot, _}} = SessionStore.import_session(bytes)
      assert {:error, {:invalid_snapshot, _}} = SessionStore.import_session("DSPX" <> bytes)
    end
  end

  test "NIF stubs given wrong terms raise ArgumentError, the VM keeps running" do
    for bad <- [1, :atom, [1, 2], {:a}, self(), 1.5, %{}] do
      assert_raise ArgumentError, fn -> Native.snapshot_encode(bad) end
      assert_raise ArgumentError, fn -> Native.snapshot_decode(bad) end
      assert_raise ArgumentError, fn -> Native.snapshot_encode_dirty(bad) end
      assert_raise ArgumentError, fn -> Native.snapshot_decode_dirty(bad) end
    end

    assert {:ok, _} = Native.snapshot_encode("still alive")
  end

  test "graph NIFs given wrong terms raise ArgumentError and change nothing", %{session: s} do
    {:ok, _} = SessionStore.register_variable(s, :y, :integer, 1)
    {:ok, graph} = Native.graph_of(s)

    for bad <- [42, 1.5, "", :binary.copy("a", 256), {:t}, [:l], self()] do
      assert_raise ArgumentError, fn -> Native.graph_add_edge_in(s, bad, :y, :data) end
      assert_raise ArgumentError, fn -> Native.graph_add_edge_in(s, :x, bad, :data) end
      assert_raise ArgumentError, fn -> Native.graph_add_edge_in(bad, :x, :y, :data) end

      unless is_list(bad),
        do: assert_raise(ArgumentError, fn -> Native.graph_add_edges(graph, bad) end)
    end

    assert {:error, {:invalid_option, {:edge, :l}}} = Native.graph_add_edges(graph, [:l])

    assert_raise ArgumentError, fn -> Native.graph_add_edge_in(s, :x, :y, :bogus) end
    # An improper list is refused whole, not read up to its tail.
    assert_raise ArgumentError, fn -> Native.graph_add_edges(graph, [{:x, :y} | :tail]) end
    assert {:ok, []} = DSPex.Bridge.DependencyManager.get_dependents(s, :x)
    # `:added` instead of `:ok` while some other test listens for events.
    assert Native.graph_add_edge_in(s, :x, :y, :data) in [:ok, :added]
    assert {:ok, [:y]} = DSPex.Bridge.DependencyManager.get_dependents(s, :x)
  end
end
