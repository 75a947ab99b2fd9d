defmodule DSPex.Bridge.SessionStoreSuite do
  @moduledoc false
  # SessionStore's semantics, which every backend keeps: a test module that says
  # `use DSPex.Bridge.SessionStoreSuite, backend: :local` (or `:redis`) runs all of them
  # against that backend, so the seam is tested, not claimed.

  defmacro __using__(opts) do
    backend = Keyword.fetch!(opts, :backend)

    quote do
      alias DSPex.Bridge.{SessionStore, Variable}
      alias DSPex.Bridge.TestHelpers

      @suite_backend unquote(backend)

      defp suite_create(id, opts \\ []),
        do: SessionStore.create_session(id, Keyword.put_new(opts, :backend, @suite_backend))

      defp suite_session!(opts \\ []),
        do: TestHelpers.session!(Keyword.put_new(opts, :backend, @suite_backend))

      describe "sessions on #{@suite_backend}" do
        test "create, get, list and delete" do
          id = TestHelpers.unique_id()
          assert {:ok, ^id} = suite_create(id, metadata: %{owner: "me"}, ttl: 10_000)
          assert id in SessionStore.list_sessions()

          assert {:ok, %{id: ^id, ttl: 10_000, metadata: %{owner: "me"}, variable_count: 0}} =
                   SessionStore.get_session(id)

          assert {:error, {:session_exists, ^id}} = suite_create(id)
          assert :ok = SessionStore.delete_session(id)
          refute id in SessionStore.list_sessions()
          assert {:error, :session_not_found} = SessionStore.get_session(id)
          assert {:error, :session_not_found} = SessionStore.delete_session(id)
        end

        test "atom ids come back as atoms" do
          id = :"atom_session_#{System.unique_integer([:positive])}"
          assert {:ok, ^id} = suite_create(id)

          assert {:ok, %Variable{session_id: ^id, name: :x}} =
                   SessionStore.register_variable(id, :x, :integer, 1)

          assert :ok = SessionStore.delete_session(id)
        end

        test "concurrent creates of one id: exactly one wins" do
          id = TestHelpers.unique_id()

          results =
            1..20
            |> Task.async_stream(fn _ -> suite_create(id) end)
            |> Enum.map(&elem(&1, 1))

          assert Enum.count(results, &match?({:ok, _}, &1)) == 1
          assert Enum.count(results, &match?({:error, {:session_exists, _}}, &1)) == 19
          SessionStore.delete_session(id)
        end

        test "an idle session expires and frees its variables" do
          id = TestHelpers.unique_id()
          {:ok, _} = suite_create(id, ttl: 80)
          {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)
          # list_sessions does not count as use; a read would keep the session alive.
          assert TestHelpers.eventually(fn -> id not in SessionStore.list_sessions() end, 2_000)
          assert {:error, :session_not_found} = SessionStore.get_variable(id, :x)
          assert {:error, :session_not_found} = SessionStore.get_session(id)
        end

        test "reads keep a session alive" do
          id = TestHelpers.unique_id()
          {:ok, _} = suite_create(id, ttl: 200)
          {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)
          # Read every 40 ms for 600 ms: three TTLs pass, but never 200 ms without a read.
          for _ <- 1..15 do
            assert {:ok, _} = SessionStore.get_variable(id, :x)
            Process.sleep(40)
          end

          assert {:ok, _} = SessionStore.get_variable(id, :x)
          SessionStore.delete_session(id)
        end
      end

      describe "variables on #{@suite_backend}" do
        setup do
          {:ok, session: suite_session!()}
        end

        test "register and read each type", %{session: s} do
          cases = [
            {:f, :float, 1, [min: 0, max: 2], 1.0},
            {:i, :integer, 3, [min: 0], 3},
            {:s, :string, "héllo", [max_length: 5], "héllo"},
            {:b, :boolean, false, [], false},
            {:c, :choice, :b, [choices: [:a, :b]], :b},
            {:m, :module, "ChainOfThought", [], "ChainOfThought"},
            {:e, :embedding, [1, 2.5], [dimensions: 2], [1.0, 2.5]},
            {:t, :tensor, [[1, 2], [3, 4], [5, 6]], [shape: [3, 2]], [[1, 2], [3, 4], [5, 6]]},
            {:j, :json, [%{q: "2+2?", a: 4}], [max_items: 8], [%{"q" => "2+2?", "a" => 4}]}
          ]

          for {name, type, value, constraints, stored} <- cases do
            assert {:ok, %Variable{name: ^name, type: ^type, value: ^stored, version: 1}} =
                     SessionStore.register_variable(s, name, type, value, constraints: constraints)

            assert {:ok, ^stored} = SessionStore.get_value(s, name)
          end

          {:ok, vars} = SessionStore.list_variables(s)
          assert Enum.map(vars, & &1.name) == Enum.sort(Enum.map(cases, &elem(&1, 0)))
        end

        test "string and atom names are distinct and come back as given", %{session: s} do
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
          {:ok, _} = SessionStore.register_variable(s, "x", :integer, 2)
          assert {:ok, 1} = SessionStore.get_value(s, :x)
          assert {:ok, 2} = SessionStore.get_value(s, "x")
        end

        test "registering twice is refused and keeps the first", %{session: s} do
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)

          assert {:error, {:variable_exists, :x}} =
                   SessionStore.register_variable(s, :x, :integer, 9)

          assert {:ok, 1} = SessionStore.get_value(s, :x)
        end

        test "unknown variable and unknown session are told apart", %{session: s} do
          assert {:error, {:variable_not_found, :nope}} = SessionStore.get_variable(s, :nope)
          assert {:error, :session_not_found} = SessionStore.get_variable("no_such_session", :x)

          assert {:error, :session_not_found} =
                   SessionStore.update_variable("no_such_session", :x, 1)
        end

        test "versions grow by one and expected_version is enforced", %{session: s} do
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 0)

          assert {:ok, %Variable{version: 2}} =
                   SessionStore.update_variable(s, :x, 1, expected_version: 1)

          assert {:error, {:version_mismatch, 2}} =
                   SessionStore.update_variable(s, :x, 5, expected_version: 1)

          assert {:ok, %Variable{value: 1, version: 2}} = SessionStore.get_variable(s, :x)
        end

        test "a value violating constraints is refused and nothing changes", %{session: s} do
          {:ok, _} =
            SessionStore.register_variable(s, :x, :integer, 5, constraints: [min: 0, max: 10])

          assert {:error, {:invalid_value, {:above_max, 10}}} =
                   SessionStore.update_variable(s, :x, 11)

          assert {:error, {:invalid_value, {:expected, :integer}}} =
                   SessionStore.update_variable(s, :x, 1.5)

          assert {:ok, %Variable{value: 5, version: 1}} = SessionStore.get_variable(s, :x)
          assert {:ok, [%{version: 1}]} = SessionStore.get_history(s, :x)
        end

        test "metadata is merged on update", %{session: s} do
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1, metadata: %{a: 1})
          {:ok, var} = SessionStore.update_variable(s, :x, 2, metadata: %{b: 2})
          assert var.metadata == %{a: 1, b: 2}
        end

        test "update_variables is all or nothing", %{session: s} do
          {:ok, _} = SessionStore.register_variable(s, :a, :integer, 1)
          {:ok, _} = SessionStore.register_variable(s, :b, :integer, 1, constraints: [max: 5])

          assert {:error, {:b, {:invalid_value, {:above_max, 5}}}} =
                   SessionStore.update_variables(s, %{a: 2, b: 6})

          assert {:ok, 1} = SessionStore.get_value(s, :a)

          assert {:error, {:b, {:version_mismatch, 1}}} =
                   SessionStore.update_variables(s, [a: 2, b: 3], expected_versions: %{b: 7})

          assert {:error, {:c, {:variable_not_found, :c}}} =
                   SessionStore.update_variables(s, a: 2, c: 3)

          assert {:error, {:a, {:duplicate_variable, :a}}} =
                   SessionStore.update_variables(s, [{:a, 2}, {:a, 3}])

          assert {:ok, [%Variable{name: :a, value: 2}, %Variable{name: :b, value: 3}]} =
                   SessionStore.update_variables(s, [a: 2, b: 3], expected_versions: %{a: 1, b: 1})
        end

        test "delete_variable removes value and history", %{session: s} do
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
          assert :ok = SessionStore.delete_variable(s, :x)
          assert {:error, {:variable_not_found, :x}} = SessionStore.get_variable(s, :x)
          assert {:error, {:variable_not_found, :x}} = SessionStore.get_history(s, :x)
          assert {:error, {:variable_not_found, :x}} = SessionStore.delete_variable(s, :x)
          assert {:ok, %Variable{version: 1}} = SessionStore.register_variable(s, :x, :integer, 7)
        end

        test "max_variables is enforced" do
          s = suite_session!(max_variables: 2)
          {:ok, _} = SessionStore.register_variable(s, :a, :integer, 1)
          {:ok, _} = SessionStore.register_variable(s, :b, :integer, 1)

          assert {:error, {:too_many_variables, 2}} =
                   SessionStore.register_variable(s, :c, :integer, 1)
        end

        test "concurrent writers to one session: no lost update", %{session: s} do
          {:ok, _} = SessionStore.register_variable(s, :counter, :integer, 0)

          # Each writer retries on version conflicts, as an optimistic client must.
          increment = fn ->
            TestHelpers.cas_increments(s, :counter, 50)
          end

          1..8 |> Enum.map(fn _ -> Task.async(increment) end) |> Enum.each(&Task.await(&1, 30_000))
          assert {:ok, %Variable{value: 400, version: 401}} = SessionStore.get_variable(s, :counter)
        end
      end

      describe "watchers on #{@suite_backend}" do
        test "a watcher gets every committed change, and none after unwatch" do
          s = suite_session!()
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
          assert {:ok, %Variable{value: 1}} = SessionStore.watch(s, :x)
          {:ok, _} = SessionStore.update_variable(s, :x, 2)
          assert_receive {:dspex_variable_changed, ^s, :x, %{old: 1, new: 2, version: 2}}
          {:error, _} = SessionStore.update_variable(s, :x, "bad")
          {:ok, _} = SessionStore.rollback_variable(s, :x, 1)
          assert_receive {:dspex_variable_changed, ^s, :x, %{old: 2, new: 1, version: 3}}
          {:ok, _} = SessionStore.update_variables(s, x: 7)
          assert_receive {:dspex_variable_changed, ^s, :x, %{old: 1, new: 7, version: 4}}
          refute_received {:dspex_variable_changed, _, _, _}

          :ok = SessionStore.unwatch(s, :x)
          {:ok, _} = SessionStore.update_variable(s, :x, 5)
          refute_receive {:dspex_variable_changed, _, _, _}, 100
        end

        test "deleting a watched variable tells the watcher" do
          s = suite_session!()
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
          {:ok, _} = SessionStore.register_variable(s, "other", :integer, 1)
          {:ok, _} = SessionStore.watch(s, :x)
          :ok = SessionStore.delete_variable(s, "other")
          :ok = SessionStore.delete_variable(s, :x)
          assert_receive {:dspex_variable_deleted, ^s, :x}
          refute_received {:dspex_variable_deleted, ^s, "other"}
        end

        test "deleting a watched session ends the watch" do
          s = TestHelpers.unique_id()
          {:ok, _} = suite_create(s)
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
          {:ok, _} = SessionStore.watch(s, :x)
          :ok = SessionStore.delete_session(s)
          assert_receive {:dspex_watch_lost, ^s, :x, :session_deleted}
        end

        test "watching an unknown variable is an error" do
          s = suite_session!()
          assert {:error, {:variable_not_found, :nope}} = SessionStore.watch(s, :nope)
        end
      end

      describe "export and import on #{@suite_backend}" do
        test "round trip keeps variables, versions, constraints and history" do
          s = suite_session!(history_limit: 10, metadata: %{team: "x"})
          {:ok, _} = SessionStore.register_variable(s, :t, :float, 0.5, constraints: [max: 1.0])
          {:ok, _} = SessionStore.register_variable(s, "emb", :embedding, [1.0, 2.0])
          {:ok, _} = SessionStore.update_variable(s, :t, 0.75)
          {:ok, bin} = SessionStore.export_session(s)

          copy = TestHelpers.unique_id("copy")

          assert {:ok, ^copy} =
                   SessionStore.import_session(bin, session_id: copy, backend: @suite_backend)

          on_exit(fn -> SessionStore.delete_session(copy) end)

          {:ok, original} = SessionStore.list_variables(s)
          {:ok, imported} = SessionStore.list_variables(copy)
          assert Enum.map(imported, &%{&1 | session_id: s}) == original
          assert SessionStore.get_history(copy, :t) == SessionStore.get_history(s, :t)

          assert {:ok, %{metadata: %{team: "x"}, history_limit: 10}} =
                   SessionStore.get_session(copy)

          # The import is a live session: constraints still hold and versions continue.
          assert {:error, {:invalid_value, _}} = SessionStore.update_variable(copy, :t, 2.0)
          assert {:ok, %Variable{version: 3}} = SessionStore.update_variable(copy, :t, 0.1)
        end

        test "importing over an existing session is refused and leaves it alone" do
          s = suite_session!()
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
          {:ok, bin} = SessionStore.export_session(s)
          {:ok, _} = SessionStore.update_variable(s, :x, 2)

          assert {:error, {:session_exists, ^s}} =
                   SessionStore.import_session(bin, backend: @suite_backend)

          assert {:ok, 2} = SessionStore.get_value(s, :x)
        end

        test "json values survive export and import, and rollback" do
          s = suite_session!()
          demos = [%{"question" => "2+2?", "answer" => "4"}]
          {:ok, _} = SessionStore.register_variable(s, "demos", :json, demos)
          {:ok, _} = SessionStore.update_variable(s, "demos", [])
          {:ok, bin} = SessionStore.export_session(s)

          {:ok, copy} =
            SessionStore.import_session(bin,
              session_id: TestHelpers.unique_id(),
              backend: @suite_backend
            )

          on_exit(fn -> SessionStore.delete_session(copy) end)
          assert {:ok, []} = SessionStore.get_value(copy, "demos")

          assert {:ok, %{value: ^demos, version: 3}} =
                   SessionStore.rollback_variable(copy, "demos", 1)
        end
      end

      describe "dependencies on #{@suite_backend}" do
        alias DSPex.Bridge.DependencyManager, as: Deps

        test "edges that refuse cycles, with paths, orders and neighbours" do
          s = suite_session!()

          for v <- [:a, :b, :c, :d],
              do: {:ok, _} = SessionStore.register_variable(s, v, :integer, 1)

          assert :ok = Deps.add_dependency(s, :a, :b)
          assert :ok = Deps.add_dependency(s, :b, :c)
          assert :ok = Deps.add_dependency(s, :a, :d)
          assert {:error, :would_create_cycle} = Deps.add_dependency(s, :c, :a)
          assert {:error, :would_create_cycle} = Deps.add_dependency(s, :a, :a)
          assert {:ok, [:a, :b, :c, :a]} = Deps.cycle_path(s, :c, :a)
          assert {:error, :no_cycle} = Deps.cycle_path(s, :a, :c)

          assert {:ok, [:a | rest]} = Deps.get_update_order(s, :a)
          assert Enum.sort(rest) == [:b, :c, :d]
          assert Enum.find_index(rest, &(&1 == :b)) < Enum.find_index(rest, &(&1 == :c))

          assert {:ok, [:a]} = Deps.get_dependencies(s, :b)
          assert {:ok, deps} = Deps.get_dependents(s, :a)
          assert Enum.sort(deps) == [:b, :d]
          assert {:ok, [:a, :b]} = Deps.get_upstream(s, :c)
          assert {:ok, down} = Deps.get_downstream(s, :a)
          assert Enum.sort(down) == [:b, :c, :d]

          assert {:error, {:variable_not_found, :zz}} = Deps.add_dependency(s, :a, :zz)
          assert :ok = Deps.remove_dependency(s, :b, :c)
          assert {:error, :dependency_not_found} = Deps.remove_dependency(s, :b, :c)
          assert {:ok, []} = Deps.get_dependents(s, :b)
          assert :ok = Deps.add_dependency(s, :c, :a)
        end

        test "a batch of edges is all or nothing" do
          s = suite_session!()
          for v <- [:a, :b, :c], do: {:ok, _} = SessionStore.register_variable(s, v, :integer, 1)

          assert {:error, :would_create_cycle} =
                   Deps.add_dependencies(s, [{:a, :b}, {:b, :c}, {:c, :a}])

          assert {:ok, []} = Deps.get_dependents(s, :a)
          assert {:ok, 2} = Deps.add_dependencies(s, [{:a, :b}, {:b, :c, :data}])
          assert {:ok, [:a, :b, :c]} = Deps.get_update_order(s, :a)
          assert :ok = Deps.clear_dependencies(s, :b)
          assert {:ok, [:a]} = Deps.get_update_order(s, :a)
        end
      end

      describe "caller and context on #{@suite_backend}" do
        test "a foreign caller without rules is refused on every path; the owner is allowed" do
          s = suite_session!()
          other = suite_session!()
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
          deny = {:error, :access_denied}
          opts = [caller: other, context: %{ip: "10.0.0.1"}]

          assert deny == SessionStore.get_variable(s, :x, opts)
          assert deny == SessionStore.get_value(s, :x, opts)
          assert {:ok, []} == SessionStore.list_variables(s, opts)
          assert deny == SessionStore.get_history(s, :x, opts)
          assert deny == SessionStore.update_variable(s, :x, 2, opts)
          assert deny == SessionStore.update_variables(s, %{x: 2}, opts)
          assert deny == SessionStore.rollback_variable(s, :x, 1, opts)
          assert deny == SessionStore.delete_variable(s, :x, opts)
          assert deny == SessionStore.register_variable(s, :y, :integer, 1, opts)
          assert deny == SessionStore.watch(s, :x, opts)
          assert deny == SessionStore.export_session(s, opts)
          assert deny == SessionStore.get_session(s, opts)
          assert deny == SessionStore.delete_session(s, opts)
          # "Does not exist" and "exists but denied" look the same to a foreign caller.
          assert deny == SessionStore.get_variable(s, :missing, opts)

          assert {:ok, %Variable{version: 1}} =
                   SessionStore.get_variable(s, :x, caller: s, context: %{})
        end

        test "policies: modes and rules decide for other sessions, and a change holds at once" do
          alias DSPex.Bridge.AccessControl
          s = suite_session!()
          reader = TestHelpers.unique_id("reader")
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1, access_mode: :protected)
          opts = [caller: reader]
          assert {:ok, %Variable{value: 1}} = SessionStore.get_variable(s, :x, opts)
          assert {:ok, [%Variable{name: :x}]} = SessionStore.list_variables(s, opts)
          assert {:error, :access_denied} = SessionStore.update_variable(s, :x, 2, opts)
          assert {:ok, %{mode: :protected, rules: []}} = AccessControl.get_policy({s, :x})

          :ok =
            AccessControl.add_rule({s, :x}, %{
              id: "w",
              session_pattern: {:exact, reader},
              permissions: [:write]
            })

          assert :ok = AccessControl.check_permission({s, :x}, reader, :write)
          assert {:ok, %Variable{value: 2}} = SessionStore.update_variable(s, :x, 2, opts)
          assert {:ok, [_]} = SessionStore.update_variables(s, %{x: 3}, opts)

          :ok = AccessControl.remove_rule({s, :x}, "w")
          assert {:error, :access_denied} = SessionStore.update_variable(s, :x, 4, opts)
          :ok = AccessControl.set_access_mode({s, :x}, :private)
          assert {:error, :access_denied} = SessionStore.get_variable(s, :x, opts)
          assert {:error, :access_denied} = AccessControl.check_permission({s, :x}, reader, :read)

          assert {:error, :access_denied} =
                   AccessControl.set_access_mode({s, :x}, :public, caller: reader)

          assert {:ok, %Variable{value: 3}} = SessionStore.get_variable(s, :x)
        end

        test "rules are checked at registration: a bad one registers nothing" do
          s = suite_session!()

          assert {:error, {:invalid_rule, 0, _}} =
                   SessionStore.register_variable(s, :x, :integer, 1,
                     access_rules: [%{permissions: [:fly]}]
                   )

          assert {:error, {:variable_not_found, :x}} = SessionStore.get_variable(s, :x)
        end
      end

      describe "history and rollback on #{@suite_backend}" do
        test "keeps the last history_limit versions, newest first" do
          s = suite_session!(history_limit: 3)
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 0)
          for i <- 1..5, do: {:ok, _} = SessionStore.update_variable(s, :x, i)
          assert {:ok, entries} = SessionStore.get_history(s, :x)
          assert Enum.map(entries, &{&1.version, &1.value}) == [{6, 5}, {5, 4}, {4, 3}]
        end

        test "rollback writes the old value as a new version" do
          s = suite_session!()
          {:ok, _} = SessionStore.register_variable(s, :x, :string, "a")
          {:ok, _} = SessionStore.update_variable(s, :x, "b")
          assert {:ok, %Variable{value: "a", version: 3}} = SessionStore.rollback_variable(s, :x, 1)
          {:ok, [latest | _]} = SessionStore.get_history(s, :x)
          assert latest.change == {:rollback, 1}
          assert {:error, {:version_not_found, 42}} = SessionStore.rollback_variable(s, :x, 42)

          assert {:error, {:invalid_option, {:version, 0}}} =
                   SessionStore.rollback_variable(s, :x, 0)
        end

        test "rollback to a version that fell out of history is refused" do
          s = suite_session!(history_limit: 2)
          {:ok, _} = SessionStore.register_variable(s, :x, :integer, 0)
          for i <- 1..3, do: {:ok, _} = SessionStore.update_variable(s, :x, i)
          assert {:error, {:version_not_found, 1}} = SessionStore.rollback_variable(s, :x, 1)
          assert {:ok, %Variable{value: 3, version: 4}} = SessionStore.get_variable(s, :x)
        end
      end
    end
  end
end
