defmodule DSPex.Bridge.SessionStoreProviderTest do
  @moduledoc """
  Every callback of DSPex's StateProvider behaviour, as SessionStoreProvider implements
  it: the return shapes DSPex documents, and capabilities that hold.
  """
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{HAManager, SessionStore, SessionStoreProvider, Variable}

  # The behaviour's callbacks (DSPex.Bridge.StateProvider), required and optional.
  @callbacks [
    init: 1,
    cleanup: 1,
    register_variable: 5,
    get_variable: 2,
    set_variable: 4,
    delete_variable: 2,
    list_variables: 1,
    get_variables: 2,
    update_variables: 3,
    export_state: 1,
    import_state: 2,
    capabilities: 0,
    requires_bridge?: 0,
    watch_variables: 4,
    unwatch_variables: 2
  ]

  setup do
    id = unique_id("provider")
    {:ok, state} = SessionStoreProvider.init(session_id: id, delete_on_cleanup: true)
    on_exit(fn -> SessionStore.delete_session(id) end)
    {:ok, state: state, id: id}
  end

  test "it exports every callback, and declares the behaviour exactly when DSPex is there" do
    for {fun, arity} <- @callbacks,
        do: assert(function_exported?(SessionStoreProvider, fun, arity), "#{fun}/#{arity}")

    declared = Keyword.get_values(SessionStoreProvider.module_info(:attributes), :behaviour)

    if Code.ensure_loaded?(DSPex.Bridge.StateProvider),
      do: assert(DSPex.Bridge.StateProvider in List.flatten(declared)),
      else: assert(declared == [])
  end

  test "no module of ours has the name of a DSPex module" do
    {:ok, modules} = :application.get_key(:dspex_bridge, :modules)

    dspex =
      ~w(DSPex DSPex.Bridge DSPex.Bridge.StateProvider DSPex.Bridge.State.Bridged
         DSPex.Bridge.State.Local DSPex.Bridge.Tools DSPex.Context DSPex.Variables
         DSPex.PythonBridge.SessionState)
      |> Enum.map(&Module.concat([&1]))

    assert Enum.filter(modules, &(&1 in dspex)) == []
  end

  test "init creates the session under HA, reuses an existing one, and checks options", %{id: id} do
    assert id in SessionStore.list_sessions()
    assert {:ok, owner} = HAManager.get_session_owner(id)
    assert owner == node()
    assert {:ok, %SessionStoreProvider{session_id: ^id}} = SessionStoreProvider.init(session_id: id)
    assert {:ok, %{session_id: generated}} = SessionStoreProvider.init(ha: false)
    on_exit(fn -> SessionStore.delete_session(generated) end)
    assert generated in SessionStore.list_sessions()
    assert {:error, :not_registered} = HAManager.get_session_owner(generated)
    assert {:error, {:invalid_option, {:ha, :maybe}}} = SessionStoreProvider.init(ha: :maybe)

    assert {:error, {:invalid_option, {:not_a_keyword_list, :nope}}} =
             SessionStoreProvider.init(:nope)

    assert {:error, {:invalid_session_id, 42}} = SessionStoreProvider.init(session_id: 42)
  end

  test "register, get, set, delete: DSPex's shapes", %{state: st, id: id} do
    assert {:ok, {"temperature", ^st}} =
             SessionStoreProvider.register_variable(st, :temperature, :float, 0.7,
               constraints: [min: 0.0, max: 2.0],
               description: "sampling"
             )

    assert {:ok, {"prompt", _}} =
             SessionStoreProvider.register_variable(st, "prompt", :string, "Hi", [])

    assert {:error, {:already_exists, :temperature}} =
             SessionStoreProvider.register_variable(st, :temperature, :float, 0.1, [])

    # By name (atom or text) and by id.
    assert {:ok, 0.7} = SessionStoreProvider.get_variable(st, :temperature)
    assert {:ok, 0.7} = SessionStoreProvider.get_variable(st, "temperature")
    assert {:ok, "Hi"} = SessionStoreProvider.get_variable(st, "prompt")
    assert {:error, :not_found} = SessionStoreProvider.get_variable(st, :prompt_that_is_not_there)
    assert {:error, :not_found} = SessionStoreProvider.get_variable(st, "never_an_atom_xyzzy")

    assert {:ok, ^st} = SessionStoreProvider.set_variable(st, "temperature", 0.9, %{by: "test"})

    assert {:ok, %Variable{value: 0.9, version: 2, metadata: %{by: "test"}}} =
             SessionStore.get_variable(id, :temperature)

    assert {:error, {:invalid_value, {:above_max, 2.0}}} =
             SessionStoreProvider.set_variable(st, :temperature, 5.0, %{})

    assert {:error, {:invalid_option, {:metadata, :x}}} =
             SessionStoreProvider.set_variable(st, :temperature, 1.0, :x)

    assert {:error, :not_found} = SessionStoreProvider.set_variable(st, :nothing_here, 1, %{})
    assert {:ok, ^st} = SessionStoreProvider.delete_variable(st, "prompt")
    assert {:error, :not_found} = SessionStoreProvider.delete_variable(st, "prompt")
  end

  test "list, get_variables, and atomic update_variables", %{state: st, id: id} do
    {:ok, _} = SessionStoreProvider.register_variable(st, :a, :integer, 1, constraints: [max: 10])
    {:ok, _} = SessionStoreProvider.register_variable(st, "b", :integer, 2, [])

    assert {:ok, [%{id: "a", name: :a, type: :integer, value: 1, version: 1} = a, %{id: "b"}]} =
             SessionStoreProvider.list_variables(st)

    assert Map.has_key?(a, :last_updated_at) and Map.has_key?(a, :constraints)

    assert {:ok, %{"a" => 1, "b" => 2}} =
             SessionStoreProvider.get_variables(st, [:a, "b", :missing_one])

    assert {:ok, ^st} = SessionStoreProvider.update_variables(st, %{a: 5, b: 6}, %{step: 1})
    assert {:ok, %{"a" => 5, "b" => 6}} = SessionStoreProvider.get_variables(st, ["a", "b"])

    # One bad value: nothing is written.
    assert {:error, {:atomic_update_failed, %{"a" => {:invalid_value, {:above_max, 10}}}}} =
             SessionStoreProvider.update_variables(st, %{a: 50, b: 7}, %{})

    assert {:error, {:atomic_update_failed, %{"zz" => :not_found}}} =
             SessionStoreProvider.update_variables(st, %{"zz" => 1, b: 7}, %{})

    assert {:ok, 6} = SessionStore.get_value(id, "b")
    assert {:ok, 5} = SessionStore.get_value(id, :a)
  end

  test "export and import move variables between sessions, checked first", %{state: st} do
    {:ok, _} = SessionStoreProvider.register_variable(st, :t, :float, 0.5, constraints: [max: 1.0])
    {:ok, _} = SessionStoreProvider.register_variable(st, "demos", :json, [%{q: "1"}], [])

    assert {:ok, %{session_id: _, variables: vars, variable_index: index, metadata: _} = export} =
             SessionStoreProvider.export_state(st)

    assert %{"t" => "t", "demos" => "demos"} = index
    assert %{"t" => %{name: :t, type: :float, value: 0.5}} = vars

    other = unique_id("provider")
    on_exit(fn -> SessionStore.delete_session(other) end)

    assert {:ok, copy} = SessionStoreProvider.init(session_id: other, existing_state: export)
    assert {:ok, 0.5} = SessionStoreProvider.get_variable(copy, :t)
    assert {:ok, [%{"q" => "1"}]} = SessionStoreProvider.get_variable(copy, "demos")

    # Importing over existing variables updates them.
    {:ok, _} = SessionStoreProvider.set_variable(st, :t, 0.75, %{})
    {:ok, export2} = SessionStoreProvider.export_state(st)
    assert {:ok, _} = SessionStoreProvider.import_state(copy, export2)
    assert {:ok, 0.75} = SessionStoreProvider.get_variable(copy, :t)

    # A bad variable anywhere: nothing is imported.
    bad =
      put_in(export2, [:variables, "new_one"], %{name: "new_one", type: :integer, value: 1})
      |> put_in([:variables, "t"], %{name: :t, type: :float, value: 3.0, constraints: %{max: 1.0}})

    assert {:error, {:invalid_export, {:t, {:invalid_value, {:above_max, 1.0}}}}} =
             SessionStoreProvider.import_state(copy, bad)

    assert {:error, :not_found} = SessionStoreProvider.get_variable(copy, "new_one")
    assert {:error, :invalid_export_format} = SessionStoreProvider.import_state(copy, %{})
  end

  test "watch_variables calls the function for every change until unwatched", %{state: st} do
    {:ok, _} = SessionStoreProvider.register_variable(st, :x, :integer, 1, [])
    {:ok, _} = SessionStoreProvider.register_variable(st, :y, :integer, 1, [])
    test = self()
    fun = fn id, old, new, meta -> send(test, {:changed, id, old, new, meta}) end

    assert {:ok, {ref, st}} =
             SessionStoreProvider.watch_variables(st, ["x", :y], fun,
               include_initial: true,
               filter: fn old, new -> new != old + 100 end
             )

    assert_receive {:changed, "x", nil, 1, %{initial: true}}
    assert_receive {:changed, :y, nil, 1, %{initial: true}}
    {:ok, st} = SessionStoreProvider.set_variable(st, :x, 2, %{})
    assert_receive {:changed, "x", 1, 2, %{version: 2}}
    # Filtered out.
    {:ok, st} = SessionStoreProvider.set_variable(st, :x, 102, %{})
    {:ok, st} = SessionStoreProvider.set_variable(st, :x, 3, %{})
    assert_receive {:changed, "x", 102, 3, %{version: 4}}
    refute_received {:changed, "x", 2, 102, _}
    {:ok, st} = SessionStoreProvider.delete_variable(st, :y)
    assert_receive {:changed, :y, nil, nil, %{deleted: true}}

    assert {:ok, st} = SessionStoreProvider.unwatch_variables(st, ref)
    {:ok, st} = SessionStoreProvider.set_variable(st, :x, 4, %{})
    {:ok, 4} = SessionStoreProvider.get_variable(st, :x)
    refute_receive {:changed, "x", 3, 4, _}, 100
    assert {:ok, ^st} = SessionStoreProvider.unwatch_variables(st, make_ref())

    assert {:error, :not_found} = SessionStoreProvider.watch_variables(st, [:nope], fun, [])

    assert {:error, {:invalid_option, {:filter, :bad}}} =
             SessionStoreProvider.watch_variables(st, [:x], fun, filter: :bad)

    assert {:error, {:invalid_option, {:watch, _}}} =
             SessionStoreProvider.watch_variables(st, [:x], fn -> :ok end, [])
  end

  test "a watch ends with its watcher process; a failing function does not end it",
       %{state: st} do
    {:ok, _} = SessionStoreProvider.register_variable(st, :x, :integer, 1, [])
    test = self()

    owner = spawn(fn -> receive do: (:never -> :ok) end)

    fun = fn _id, _old, new, _meta ->
      if new == 2, do: raise("boom")
      send(test, {:seen, new})
    end

    {:ok, {_ref, st}} = SessionStoreProvider.watch_variables(st, [:x], fun, watcher_pid: owner)
    [watcher] = Map.values(st.watchers)

    ExUnit.CaptureLog.capture_log(fn ->
      {:ok, _} = SessionStoreProvider.set_variable(st, :x, 2, %{})
      {:ok, _} = SessionStoreProvider.set_variable(st, :x, 3, %{})
      assert_receive {:seen, 3}
    end)

    ref = Process.monitor(watcher)
    Process.exit(owner, :kill)
    assert_receive {:DOWN, ^ref, :process, ^watcher, _}
  end

  test "wrong terms are clear errors and change nothing", %{state: st, id: id} do
    {:ok, _} = SessionStoreProvider.register_variable(st, :x, :integer, 1, [])
    fun = fn _, _, _, _ -> :ok end

    for bad <- [nil, %{session_id: id}, "state", {:state}] do
      e = {:error, {:invalid_state, bad}}
      assert ^e = SessionStoreProvider.cleanup(bad)
      assert ^e = SessionStoreProvider.register_variable(bad, :y, :integer, 1, [])
      assert ^e = SessionStoreProvider.get_variable(bad, :x)
      assert ^e = SessionStoreProvider.set_variable(bad, :x, 2, %{})
      assert ^e = SessionStoreProvider.delete_variable(bad, :x)
      assert ^e = SessionStoreProvider.list_variables(bad)
      assert ^e = SessionStoreProvider.get_variables(bad, [:x])
      assert ^e = SessionStoreProvider.update_variables(bad, %{x: 2}, %{})
      assert ^e = SessionStoreProvider.export_state(bad)
      assert ^e = SessionStoreProvider.import_state(bad, %{variables: %{}})
      assert ^e = SessionStoreProvider.watch_variables(bad, [:x], fun, [])
      assert ^e = SessionStoreProvider.unwatch_variables(bad, make_ref())
    end

    for bad <- [42, {:x}, [:x], self()] do
      assert {:error, {:invalid_name, ^bad}} = SessionStoreProvider.get_variable(st, bad)
      assert {:error, {:invalid_name, ^bad}} = SessionStoreProvider.set_variable(st, bad, 1, %{})
      assert {:error, {:invalid_name, ^bad}} = SessionStoreProvider.delete_variable(st, bad)

      assert {:error, {:invalid_name, ^bad}} =
               SessionStoreProvider.register_variable(st, bad, :integer, 1, [])
    end

    assert {:ok, %{}} = SessionStoreProvider.get_variables(st, [42, {:x}])
    assert {:error, {:invalid_option, _}} = SessionStoreProvider.get_variables(st, :x)
    assert {:error, {:invalid_option, _}} = SessionStoreProvider.update_variables(st, [x: 2], %{})

    assert {:error, {:invalid_type, :complex}} =
             SessionStoreProvider.register_variable(st, :z, :complex, 1, [])

    assert {:error, {:invalid_option, {:existing_state, :nope}}} =
             SessionStoreProvider.init(session_id: unique_id(), existing_state: :nope)

    assert {:ok, 1} = SessionStoreProvider.get_variable(st, :x)
    assert {:ok, [%{name: :x, version: 1}]} = SessionStoreProvider.list_variables(st)
  end

  test "capabilities hold, cleanup ends watches and deletes the session when asked",
       %{state: st, id: id} do
    caps = SessionStoreProvider.capabilities()

    assert %{atomic_updates: true, streaming: true, persistent: true, distributed: true} = caps
    refute SessionStoreProvider.requires_bridge?()

    # persistent: the session outlives the process that made it.
    other = unique_id("provider")
    on_exit(fn -> SessionStore.delete_session(other) end)

    task = Task.async(fn -> SessionStoreProvider.init(session_id: other) end)
    {:ok, made} = Task.await(task)
    {:ok, _} = SessionStoreProvider.register_variable(made, :kept, :integer, 1, [])
    assert {:ok, 1} = SessionStoreProvider.get_variable(made, :kept)

    {:ok, _} = SessionStoreProvider.register_variable(st, :x, :integer, 1, [])
    {:ok, {_ref, st}} = SessionStoreProvider.watch_variables(st, [:x], fn _, _, _, _ -> :ok end, [])
    [watcher] = Map.values(st.watchers)
    assert :ok = SessionStoreProvider.cleanup(st)
    refute Process.alive?(watcher)
    refute id in SessionStore.list_sessions()
    assert {:error, :session_expired} = SessionStoreProvider.get_variables(st, [:x])
    assert {:error, :session_expired} = SessionStoreProvider.list_variables(st)
    # Without delete_on_cleanup the session stays.
    assert :ok = SessionStoreProvider.cleanup(made)
    assert other in SessionStore.list_sessions()
  end
end
