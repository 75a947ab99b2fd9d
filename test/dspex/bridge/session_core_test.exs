defmodule DSPex.Bridge.SessionCoreTest do
  @moduledoc """
  The session's core (`dspex_core::session` through `Native.session_*`): the commands and
  their replies, its refusals in SessionStore's words, wrong terms refused with nothing
  changed, and SessionStore keeping its rows' versions exactly where the core counts them.
  """
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{DependencyManager, Native, SessionStore}

  defp apply!(core, command), do: Native.session_apply(core, command, 0)

  test "commands, replies and refusals" do
    core = Native.session_new()
    assert {:ok, 1, {:versions, [1]}} = apply!(core, {:register, %{name: :a, inputs: []}})
    assert {:ok, 2, {:versions, [1]}} = apply!(core, {:register, %{name: "b", inputs: [:a]}})
    assert {:error, {:variable_exists, :a}} = apply!(core, {:register, %{name: :a, inputs: []}})
    assert {:error, {:variable_not_found, :zz}} = apply!(core, {:delete, :zz})

    write = fn name, expected -> {name, expected, nil} end
    assert {:ok, 3, {:versions, [2, 2]}} = apply!(core, {:write, [write.(:a, 1), write.("b", 1)]})
    assert {:error, {:version_mismatch, 2}} = apply!(core, {:write, [write.(:a, 1)]})

    assert {:error, {:duplicate_variable, :a}} =
             apply!(core, {:write, [write.(:a, nil), write.(:a, nil)]})

    assert {:error, {:has_dependents, ["b"]}} = apply!(core, {:delete, :a})
    assert {:error, {:compute_input, "b", :a}} = apply!(core, {:remove_edge, %{from: :a, to: "b"}})
    assert {:error, {:compute_input, "b", :computed}} = apply!(core, {:clear_edges, "b"})
    assert {:error, {:cycle, _}} = apply!(core, {:add_edges, [{"b", :a, :data}]})
    assert {:error, :dependency_not_found} = apply!(core, {:remove_edge, %{from: "b", to: :a}})

    # A lock fence: writes need its token until the lease ends.
    hold = %{name: :a, holder: "opt", token: 7, until_ms: 100}
    assert {:ok, _, :done} = apply!(core, {:hold, hold})
    assert {:error, {:locked_by, "opt"}} = apply!(core, {:write, [write.(:a, nil)]})
    assert {:error, :stale_token} = apply!(core, {:write, [{:a, nil, 6}]})
    assert {:ok, _, {:versions, [3]}} = apply!(core, {:write, [{:a, nil, 7}]})
    assert {:ok, _, {:released, true}} = apply!(core, {:release, %{name: :a, holder: nil}})
    assert {:ok, seq, :done} = apply!(core, {:record, "anything"})
    assert {^seq, 2} = Native.session_info(core)
    assert {:ok, 3} = Native.session_version(core, :a)
  end

  test "wrong terms raise ArgumentError and change nothing" do
    core = Native.session_new()
    {:ok, _, _} = apply!(core, {:register, %{name: :a, inputs: []}})
    before = Native.session_info(core)

    bad = [
      :nope,
      {:register, %{name: :b}},
      {:register, %{name: {:tuple}, inputs: []}},
      {:register, %{name: :b, inputs: [:a | :tail]}},
      {:write, [{:a, -1, nil}]},
      {:write, [%{name: :a, expected_version: 1, token: nil}]},
      {:write, :a},
      {:add_edges, [{:a, :a}]},
      {:add_edges, [{:a, :a, :bogus}]},
      {:record, [1, 2]},
      {:hold, %{name: :a, holder: "o", token: -1, until_ms: 1}},
      "register"
    ]

    for command <- bad do
      assert_raise ArgumentError, fn -> apply!(core, command) end
    end

    assert_raise ArgumentError, fn -> Native.session_apply(core, {:delete, :a}, -5) end
    assert_raise ArgumentError, fn -> Native.session_apply(:not_a_core, {:delete, :a}, 0) end
    assert Native.session_info(core) == before
  end

  test "an import fills an empty core once" do
    core = Native.session_new()
    assert :ok = Native.session_load(core, [{:a, 5, []}, {:b, 2, [:a]}], [{:a, :b, :data}])
    assert {:ok, 5} = Native.session_version(core, :a)
    assert {:error, :not_empty} = Native.session_load(core, [], [])

    other = Native.session_new()
    assert {:error, {:cycle, _}} = Native.session_load(other, [{:a, 1, [:b]}, {:b, 1, [:a]}], [])
    assert {0, 0} = Native.session_info(other)
  end

  test "SessionStore's rows carry the versions the core counts" do
    s = unique_id()
    {:ok, _} = SessionStore.create_session(s)
    {:ok, _} = SessionStore.register_variable(s, :b, :integer, 1)

    {:ok, _} =
      SessionStore.register_variable(s, :y, :integer, 0,
        compute: {{DSPex.Bridge.TestComputes, :double_b}, [:b]}
      )

    {:ok, core} = Native.graph_of(s)

    for v <- 2..5, do: {:ok, _} = SessionStore.update_variable(s, :b, v)
    {:ok, _} = SessionStore.rollback_variable(s, :b, 2)

    for name <- [:b, :y] do
      {:ok, var} = SessionStore.get_variable(s, name)
      assert {:ok, var.version} == Native.session_version(core, name)
    end

    # The core refuses what would break a computed variable, in SessionStore's words.
    assert {:error, {:has_dependents, [:y]}} = SessionStore.delete_variable(s, :b)
    assert {:error, {:compute_input, :y, :b}} = DependencyManager.remove_dependency(s, :b, :y)

    # An exported and imported session starts from the same counts.
    {:ok, binary} = SessionStore.export_session(s)
    copy = unique_id()
    {:ok, ^copy} = SessionStore.import_session(binary, session_id: copy)
    {:ok, copy_core} = Native.graph_of(copy)
    assert Native.session_version(copy_core, :b) == Native.session_version(core, :b)
    assert {:ok, %{version: v}} = SessionStore.update_variable(copy, :b, 9)
    assert {:ok, v} == Native.session_version(copy_core, :b)
    assert {:ok, %{value: 18}} = SessionStore.get_variable(copy, :y)
  end
end
