defmodule DSPex.Bridge.DependencyManagerTest do
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{DependencyManager, Events, SessionStore, Variable}

  doctest DSPex.Bridge.DependencyManager

  defp vars!(s, names, value \\ 1) do
    for n <- names, do: {:ok, _} = SessionStore.register_variable(s, n, :integer, value)
    s
  end

  describe "the graph" do
    test "ids of every length, inline and spilled, are found and come back as given" do
      # The native key keeps up to 14 bytes of id inline; longer ones live on the heap.
      texts = for n <- [1, 13, 14, 15, 16, 22, 23, 24, 100, 255], do: String.duplicate("k", n)
      ids = texts ++ Enum.map(texts, &String.to_atom/1) ++ [:"é#{String.duplicate("x", 30)}"]
      s = session!() |> vars!([:root | ids])

      for id <- ids, do: :ok = DependencyManager.add_dependency(s, :root, id)

      assert {:ok, dependents} = DependencyManager.get_dependents(s, :root)
      assert Enum.sort(dependents) == Enum.sort(ids)

      for id <- ids do
        assert {:ok, [^id]} = DependencyManager.get_update_order(s, id)
        assert {:ok, [:root]} = DependencyManager.get_dependencies(s, id)
      end

      assert {:ok, 0} = DependencyManager.add_dependencies(s, Enum.map(ids, &{:root, &1}))
    end

    test "an added edge is announced with its ends and kind, by either path" do
      :ok = Events.subscribe([:dspex, :bridge, :dependency, :added])
      s = session!() |> vars!([:a, "b", :c])
      :ok = DependencyManager.add_dependency(s, :a, "b", :compute)

      assert_receive {:dspex_event, [:dspex, :bridge, :dependency, :added], _,
                      %{session_id: ^s, from: :a, to: "b", type: :compute}}

      :ok = DependencyManager.add_dependency(s, "b", :c, :data, timeout: 1_000)

      assert_receive {:dspex_event, [:dspex, :bridge, :dependency, :added], _,
                      %{session_id: ^s, from: "b", to: :c, type: :data}}
    end

    test "edges, neighbours, update order; string and atom ids come back as given" do
      s = session!() |> vars!([:a, "b", :c, "d"])
      :ok = DependencyManager.add_dependency(s, :a, "b")
      :ok = DependencyManager.add_dependency(s, :a, :c, :compute)
      :ok = DependencyManager.add_dependency(s, "b", "d", "feeds")
      :ok = DependencyManager.add_dependency(s, :c, "d", :constraint)

      assert {:ok, [:a, mid1, mid2, "d"]} = DependencyManager.get_update_order(s, :a)
      assert MapSet.new([mid1, mid2]) == MapSet.new([:c, "b"])
      assert {:ok, ["b", "d"]} = DependencyManager.get_update_order(s, "b")
      assert {:ok, deps} = DependencyManager.get_dependencies(s, "d")
      assert MapSet.new(deps) == MapSet.new([:c, "b"])
      assert {:ok, ["d"]} = DependencyManager.get_dependents(s, :c)
      assert {:ok, [:a | _]} = DependencyManager.get_upstream(s, "d")
      assert {:ok, downstream} = DependencyManager.get_downstream(s, :a)
      assert length(downstream) == 3
      assert {:ok, %{variables: 4, dependencies: 4}} = DependencyManager.graph_size(s)

      {:ok, dot} = DependencyManager.visualize_graph(s)
      assert dot =~ "digraph dependencies"
      assert dot =~ ~s(label=":a")
      assert dot =~ ~s(label="\\"b\\"")
      assert dot =~ ~s(label="feeds")
    end

    test "any atom names sessions and variables, exactly as given" do
      # NIF API 2.16 reads only Latin-1 atom text; other atoms cross by their UTF-8 text
      # under a key of their own.
      for id <- [
            :"会话_#{System.unique_integer([:positive])}",
            :"sessão_#{System.unique_integer([:positive])}"
          ] do
        {:ok, ^id} = SessionStore.create_session(id)
        vars!(id, [:é, "b", :π])
        assert :ok = DependencyManager.add_dependency(id, :é, "b")
        assert :ok = DependencyManager.add_dependency(id, "b", :π)
        assert {:ok, [:é, "b", :π]} = DependencyManager.get_update_order(id, :é)

        assert {:error, {:variable_not_found, :"😀"}} =
                 DependencyManager.add_dependency(id, :"😀", "b")

        assert :ok = DependencyManager.remove_dependency(id, "b", :π)
        assert {:error, :dependency_not_found} = DependencyManager.remove_dependency(id, :π, :x)
        assert :ok = SessionStore.delete_session(id)
        assert {:error, :session_not_found} = DependencyManager.add_dependency(id, :é, "b")
      end
    end

    test "a cycle is refused with its path in the event and from cycle_path/3" do
      :ok = Events.subscribe([:dspex, :bridge, :dependency, :cycle_detected])
      s = session!() |> vars!([:a, :b, :c])
      :ok = DependencyManager.add_dependency(s, :a, :b)
      :ok = DependencyManager.add_dependency(s, :b, :c)
      assert {:error, :would_create_cycle} = DependencyManager.add_dependency(s, :c, :a)

      assert_receive {:dspex_event, [:dspex, :bridge, :dependency, :cycle_detected], _,
                      %{session_id: ^s, from: :c, to: :a, path: [:a, :b, :c, :a]}}

      assert {:ok, [:a, :b, :c, :a]} = DependencyManager.cycle_path(s, :c, :a)
      assert {:error, :no_cycle} = DependencyManager.cycle_path(s, :a, :c)
      assert {:error, :would_create_cycle} = DependencyManager.add_dependency(s, :b, :b)
      assert {:ok, [:b, :b]} = DependencyManager.cycle_path(s, :b, :b)
      assert {:ok, %{dependencies: 2}} = DependencyManager.graph_size(s)
    end

    test "bulk insert is all or nothing and names the first cycle" do
      s = session!() |> vars!([:a, :b, :c, :d])
      assert {:ok, 2} = DependencyManager.add_dependencies(s, [{:a, :b}, {:b, :c, :compute}])

      Events.subscribe([:dspex, :bridge, :dependency, :cycle_detected])

      assert {:error, :would_create_cycle} =
               DependencyManager.add_dependencies(s, [{:c, :d}, {:d, :a}, {:d, :b}])

      assert_receive {:dspex_event, [:dspex, :bridge, :dependency, :cycle_detected], _,
                      %{from: :d, to: :a, path: [:a, :b, :c, :d, :a]}}

      assert {:ok, %{dependencies: 2}} = DependencyManager.graph_size(s)
    end

    test "bulk insert refuses the first malformed entry, in list order, and adds nothing" do
      s = session!() |> vars!([:a, :b, "c"])
      good = {:a, "c"}

      for {entries, reason} <- [
            {[good, {:a}], {:invalid_option, {:edge, {:a}}}},
            {[good, {:a, :b, :likes}, {:a}], {:invalid_type, :likes}},
            {[good, {"", :b}], {:invalid_option, {:edge, {"", :b}}}},
            {[good, {:a, String.duplicate("x", 256)}],
             {:invalid_option, {:edge, {:a, String.duplicate("x", 256)}}}},
            {[good, {1, :b, :data}], {:invalid_option, {:edge, {1, :b, :data}}}},
            {[good, {1, :b, :likes}], {:invalid_option, {:edge, {1, :b, :likes}}}},
            {[good, [:a, :b]], {:invalid_option, {:edge, [:a, :b]}}},
            {[good, {:a, :"😀"}], {:variable_not_found, :"😀"}},
            {[good, {:a, :zz}], {:variable_not_found, :zz}}
          ] do
        assert {:error, ^reason} = DependencyManager.add_dependencies(s, entries)
      end

      assert {:ok, %{dependencies: 0}} = DependencyManager.graph_size(s)
      assert {:ok, 1} = DependencyManager.add_dependencies(s, [good, {:a, "c", "feeds"}])
      assert {:ok, %{dependencies: 1}} = DependencyManager.graph_size(s)
    end

    test "remove and clear" do
      s = session!() |> vars!([:a, :b, :c])
      :ok = DependencyManager.add_dependency(s, :a, :b)
      :ok = DependencyManager.add_dependency(s, :b, :c)
      assert :ok = DependencyManager.remove_dependency(s, :a, :b)
      assert {:error, :dependency_not_found} = DependencyManager.remove_dependency(s, :a, :b)
      assert :ok = DependencyManager.add_dependency(s, :c, :a)
      assert :ok = DependencyManager.clear_dependencies(s, :c)
      assert {:ok, %{dependencies: 0}} = DependencyManager.graph_size(s)
    end

    test "deleting a variable removes its edges; one others compute from is refused" do
      s = session!() |> vars!([:a, :b])
      :ok = DependencyManager.add_dependency(s, :a, :b)

      {:ok, _} =
        SessionStore.register_variable(s, :sum, :integer, nil, compute: {&(&1.a + 1), [:a]})

      assert {:error, {:has_dependents, [:sum]}} = SessionStore.delete_variable(s, :a)
      assert :ok = SessionStore.delete_variable(s, :b)
      assert {:ok, [:sum]} = DependencyManager.get_dependents(s, :a)
      assert {:error, {:variable_not_found, :b}} = DependencyManager.get_dependents(s, :b)
    end

    test "the option-less call refuses exactly what the checked path refuses" do
      s = session!() |> vars!([:a, :b])
      long = String.duplicate("x", 256)
      bad_utf8 = <<0xFF, 0xFE>>

      for {args, expected} <- [
            {["", :a, :b], {:error, {:invalid_session_id, ""}}},
            {[long, :a, :b], {:error, {:invalid_session_id, long}}},
            {[{:s}, :a, :b], {:error, {:invalid_session_id, {:s}}}},
            {[s, "", :b], {:error, {:invalid_name, ""}}},
            {[s, :a, long], {:error, {:invalid_name, long}}},
            {[s, :a, 1.5], {:error, {:invalid_name, 1.5}}},
            {[s, :a, :b, :likes], {:error, {:invalid_type, :likes}}},
            {[s, :a, :b, 7], {:error, {:invalid_type, 7}}},
            {[s, :a, :b, bad_utf8], {:error, {:invalid_type, bad_utf8}}},
            {[s, :a, :"😀"], {:error, {:variable_not_found, :"😀"}}}
          ] do
        assert apply(DependencyManager, :add_dependency, args) == expected, inspect(args)
      end

      assert {:ok, []} = DependencyManager.get_dependents(s, :a)
    end

    test "bad input leaves the graph unchanged" do
      s = session!() |> vars!([:a, :b])
      :ok = DependencyManager.add_dependency(s, :a, :b)
      assert {:error, {:variable_not_found, :zz}} = DependencyManager.add_dependency(s, :a, :zz)
      assert {:error, :session_not_found} = DependencyManager.add_dependency("nope", :a, :b)
      assert {:error, {:invalid_name, 42}} = DependencyManager.add_dependency(s, 42, :b)
      assert {:error, {:invalid_name, {:x}}} = DependencyManager.get_update_order(s, {:x})
      assert {:error, {:invalid_type, :likes}} = DependencyManager.add_dependency(s, :a, :b, :likes)
      assert {:error, {:invalid_session_id, 1}} = DependencyManager.get_dependents(1, :a)
      assert {:error, {:invalid_option, {:edge, :x}}} = DependencyManager.add_dependencies(s, [:x])
      assert {:error, {:invalid_option, {:edges, :x}}} = DependencyManager.add_dependencies(s, :x)
      too_many = List.duplicate({:a, :b}, 1_000_001)

      assert {:error, {:too_many, 1_000_001, 1_000_000}} =
               DependencyManager.add_dependencies(s, too_many)

      assert {:error, :access_denied} =
               DependencyManager.add_dependency(s, :b, :a, :data, caller: "x")

      assert {:error, {:variable_not_found, :"😀"}} = DependencyManager.get_update_order(s, :"😀")

      assert {:error, {:invalid_compute, {:f, []}}} =
               DependencyManager.define_computed(s, :b, :f, [])

      assert {:ok, %{dependencies: 1}} = DependencyManager.graph_size(s)
      assert {:ok, [:a, :b]} = DependencyManager.get_update_order(s, :a)
    end
  end

  describe "reactive propagation" do
    test "a diamond recomputes each variable once, in order" do
      s = session!()
      parent = self()

      counted = fn name, fun ->
        fn inputs ->
          send(parent, {:computed, name})
          fun.(inputs)
        end
      end

      {:ok, _} = SessionStore.register_variable(s, :a, :integer, 1)

      {:ok, _} =
        SessionStore.register_variable(s, :b, :integer, nil,
          compute: {counted.(:b, &(&1.a * 10)), [:a]}
        )

      {:ok, _} =
        SessionStore.register_variable(s, :c, :integer, nil,
          compute: {counted.(:c, &(&1.a + 1)), [:a]}
        )

      {:ok, %Variable{value: 12}} =
        SessionStore.register_variable(s, :d, :integer, nil,
          compute: {counted.(:d, &(&1.b + &1.c)), [:b, :c]}
        )

      flush_computed()
      {:ok, _} = SessionStore.update_variable(s, :a, 2)
      computed = flush_computed()
      assert Enum.sort(computed) == [:b, :c, :d]
      assert List.last(computed) == :d
      assert {:ok, %Variable{value: 23, version: 2}} = SessionStore.get_variable(s, :d)
    end

    test "early cutoff: an unchanged recompute stops the wave" do
      s = session!()
      parent = self()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 4)

      {:ok, _} =
        SessionStore.register_variable(s, :parity, :integer, nil, compute: {&rem(&1.x, 2), [:x]})

      {:ok, _} =
        SessionStore.register_variable(s, :label, :string, nil,
          compute:
            {fn %{parity: p} ->
               send(parent, :label_computed)
               if p == 0, do: "even", else: "odd"
             end, [:parity]}
        )

      assert_received :label_computed
      {:ok, _} = SessionStore.update_variable(s, :x, 6)
      refute_received :label_computed
      assert {:ok, %Variable{version: 1}} = SessionStore.get_variable(s, :parity)
      {:ok, _} = SessionStore.update_variable(s, :x, 7)
      assert_received :label_computed
      assert {:ok, "odd"} = SessionStore.get_value(s, :label)
    end

    test "a raising compute marks stale, skips its downstream, spares other branches" do
      :ok = Events.subscribe([:dspex, :bridge, :dependency])
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      {:ok, _} = SessionStore.register_variable(s, :inv, :float, nil, compute: {&(1 / &1.x), [:x]})

      {:ok, _} =
        SessionStore.register_variable(s, :inv2, :float, nil, compute: {&(&1.inv * 2), [:inv]})

      {:ok, _} =
        SessionStore.register_variable(s, :double, :integer, nil, compute: {&(&1.x * 2), [:x]})

      {:ok, %Variable{value: 0}} = SessionStore.update_variable(s, :x, 0)

      assert {:ok, %Variable{value: 1.0, version: 1, stale: {:compute_failed, %ArithmeticError{}}}} =
               SessionStore.get_variable(s, :inv)

      assert {:ok, %Variable{value: 2.0, stale: {:upstream_failed, :inv}}} =
               SessionStore.get_variable(s, :inv2)

      assert {:ok, %Variable{value: 0, stale: nil, version: 2}} =
               SessionStore.get_variable(s, :double)

      assert_receive {:dspex_event, [:dspex, :bridge, :dependency, :propagation_failed], _,
                      %{session_id: ^s, name: :inv, reason: {:compute_failed, %ArithmeticError{}}}}

      assert_receive {:dspex_event, [:dspex, :bridge, :dependency, :propagation_completed],
                      %{updated_count: 1, failed_count: 1, duration_us: _}, %{session_id: ^s}}

      # Recovery: a good input recomputes the chain and clears the marks.
      {:ok, _} = SessionStore.update_variable(s, :x, 4)
      assert {:ok, %Variable{value: 0.25, stale: nil}} = SessionStore.get_variable(s, :inv)
      assert {:ok, %Variable{value: 0.5, stale: nil}} = SessionStore.get_variable(s, :inv2)
    end

    test "a compute returning a value of the wrong type fails like a raise" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)

      {:ok, _} =
        SessionStore.register_variable(s, :y, :integer, nil,
          compute: {&if(&1.x > 5, do: "big", else: &1.x), [:x]}
        )

      {:ok, _} = SessionStore.update_variable(s, :x, 9)

      assert {:ok,
              %Variable{value: 1, stale: {:compute_failed, {:invalid_value, {:expected, :integer}}}}} =
               SessionStore.get_variable(s, :y)
    end

    test "update_variables propagates once over the union" do
      s = session!()
      parent = self()
      {:ok, _} = SessionStore.register_variable(s, :a, :integer, 1)
      {:ok, _} = SessionStore.register_variable(s, :b, :integer, 1)

      {:ok, _} =
        SessionStore.register_variable(s, :sum, :integer, nil,
          compute:
            {fn i ->
               send(parent, :sum_computed)
               i.a + i.b
             end, [:a, :b]}
        )

      assert_received :sum_computed
      {:ok, _} = SessionStore.update_variables(s, %{a: 10, b: 20})
      assert_received :sum_computed
      refute_received :sum_computed
      assert {:ok, %Variable{value: 30, version: 2}} = SessionStore.get_variable(s, :sum)
    end

    test "async sessions return before propagating; await_propagation waits" do
      s = session!(propagation: :async)
      gate = self()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)

      {:ok, _} =
        SessionStore.register_variable(s, :slow, :integer, nil,
          compute:
            {fn %{x: x} ->
               if x > 1, do: receive(do: (:go -> :ok))
               send(gate, :done)
               x
             end, [:x]}
        )

      assert_received :done
      [{_, _, pid, _}] = :ets.lookup(:dspex_bridge_sessions, s)
      {:ok, %Variable{version: 2}} = SessionStore.update_variable(s, :x, 2)
      # The write returned while the recompute is still waiting for :go.
      assert {:ok, %Variable{value: 1}} = SessionStore.get_variable(s, :slow)
      send(pid, :go)
      assert :ok = SessionStore.await_propagation(s)
      assert {:ok, %Variable{value: 2}} = SessionStore.get_variable(s, :slow)
    end

    test "define_computed turns an existing variable into a computed one" do
      s = session!() |> vars!([:a, :b])

      assert {:ok, %Variable{value: 2}} =
               DependencyManager.define_computed(s, :b, &(&1.a * 2), [:a])

      {:ok, _} = SessionStore.update_variable(s, :a, 5)
      assert {:ok, 10} = SessionStore.get_value(s, :b)

      assert {:error, :would_create_cycle} = DependencyManager.define_computed(s, :a, & &1.b, [:b])

      assert {:error, {:compute_input, :b, :a}} = DependencyManager.remove_dependency(s, :a, :b)

      assert {:error, {:variable_not_found, :zz}} =
               DependencyManager.define_computed(s, :a, & &1, [:zz])
    end

    test "a computed variable cannot be its own input or have no inputs" do
      s = session!() |> vars!([:a])

      assert {:error, :would_create_cycle} =
               SessionStore.register_variable(s, :z, :integer, nil, compute: {& &1, [:z]})

      assert {:error, {:invalid_compute, :no_inputs}} =
               SessionStore.register_variable(s, :z, :integer, nil, compute: {& &1, []})

      assert {:error, {:invalid_compute, :bad}} =
               SessionStore.register_variable(s, :z, :integer, nil, compute: :bad)

      assert {:error, {:variable_not_found, :z}} = SessionStore.get_variable(s, :z)
    end

    test "export/import carries the graph and the computations named by reference" do
      s = session!() |> vars!([:a])

      {:ok, _} =
        SessionStore.register_variable(s, :b, :integer, nil,
          compute: {{DSPex.Bridge.TestComputes, :add, [100]}, [:a]}
        )

      {:ok, _} =
        SessionStore.register_variable(s, :c, :integer, nil,
          compute: {{DSPex.Bridge.TestComputes, :double_b}, [:b]}
        )

      {:ok, bin} = SessionStore.export_session(s)
      copy = unique_id("copy")
      {:ok, ^copy} = SessionStore.import_session(bin, session_id: copy)
      on_exit(fn -> SessionStore.delete_session(copy) end)
      assert {:ok, [:a, :b, :c]} = DependencyManager.get_update_order(copy, :a)
      {:ok, _} = SessionStore.update_variable(copy, :a, 5)
      assert {:ok, 105} = SessionStore.get_value(copy, :b)
      assert {:ok, 210} = SessionStore.get_value(copy, :c)
    end

    test "a closure compute stays in the VM: export refuses it by name" do
      s = session!() |> vars!([:a])

      {:ok, _} =
        SessionStore.register_variable(s, :b, :integer, nil, compute: {&(&1.a + 100), [:a]})

      assert {:error, {:not_exportable, {:closure_compute, :b}}} = SessionStore.export_session(s)
    end

    test "a compute reference must name exported code" do
      s = session!() |> vars!([:a])

      for bad <- [
            {Nope.Module, :f},
            {DSPex.Bridge.TestComputes, :add},
            {DSPex.Bridge.TestComputes, :add, :x},
            {"m", :f}
          ] do
        assert {:error, {:invalid_compute, _}} =
                 SessionStore.register_variable(s, :b, :integer, nil, compute: {bad, [:a]})
      end
    end
  end

  defp flush_computed(acc \\ []) do
    receive do
      {:computed, name} -> flush_computed([name | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
