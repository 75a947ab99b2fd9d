defmodule DSPex.Bridge.SessionStoreTest do
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{SessionStore, Variable}

  doctest DSPex.Bridge.SessionStore

  describe "sessions" do
    test "create, get, list and delete" do
      id = unique_id()
      assert {:ok, ^id} = SessionStore.create_session(id, metadata: %{owner: "me"}, ttl: 10_000)
      assert id in SessionStore.list_sessions()

      assert {:ok, %{id: ^id, ttl: 10_000, metadata: %{owner: "me"}, variable_count: 0}} =
               SessionStore.get_session(id)

      assert {:error, {:session_exists, ^id}} = SessionStore.create_session(id)
      assert :ok = SessionStore.delete_session(id)
      refute id in SessionStore.list_sessions()
      assert {:error, :session_not_found} = SessionStore.get_session(id)
      assert {:error, :session_not_found} = SessionStore.delete_session(id)
    end

    test "atom ids come back as atoms" do
      id = :"atom_session_#{System.unique_integer([:positive])}"
      assert {:ok, ^id} = SessionStore.create_session(id)

      assert {:ok, %Variable{session_id: ^id, name: :x}} =
               SessionStore.register_variable(id, :x, :integer, 1)

      assert :ok = SessionStore.delete_session(id)
    end

    test "concurrent creates of one id: exactly one wins" do
      id = unique_id()

      results =
        1..20
        |> Task.async_stream(fn _ -> SessionStore.create_session(id) end)
        |> Enum.map(&elem(&1, 1))

      assert Enum.count(results, &match?({:ok, _}, &1)) == 1
      assert Enum.count(results, &match?({:error, {:session_exists, _}}, &1)) == 19
      SessionStore.delete_session(id)
    end

    test "deleting a session frees its variables and history" do
      id = session!()
      for i <- 1..50, do: {:ok, _} = SessionStore.register_variable(id, "v#{i}", :integer, i)
      {_, vars, history} = SessionStore.tables()
      assert :ets.select_count(vars, [{{{id, :_}, :_, :_}, [], [true]}]) == 50
      :ok = SessionStore.delete_session(id)
      assert :ets.select_count(vars, [{{{id, :_}, :_, :_}, [], [true]}]) == 0
      assert :ets.select_count(history, [{{{id, :_}, :_}, [], [true]}]) == 0
    end

    test "an idle session expires, emits :expired and frees its variables" do
      :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :session, :expired])
      id = unique_id()
      {:ok, _} = SessionStore.create_session(id, ttl: 80)
      {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)

      assert_receive {:dspex_event, [:dspex, :bridge, :session, :expired], %{idle_ms: idle},
                      %{session_id: ^id}},
                     1_000

      assert idle >= 80
      assert {:error, :session_not_found} = SessionStore.get_variable(id, :x)
      refute id in SessionStore.list_sessions()
    end

    test "reads keep a session alive" do
      id = unique_id()
      {:ok, _} = SessionStore.create_session(id, ttl: 200)
      {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)
      # Read every 40 ms for 600 ms: three TTLs pass, but never 200 ms without a read.
      for _ <- 1..15 do
        assert {:ok, _} = SessionStore.get_variable(id, :x)
        Process.sleep(40)
      end

      assert {:ok, _} = SessionStore.get_variable(id, :x)
      SessionStore.delete_session(id)
    end

    test "a crashed session process is restarted and nothing stored is lost" do
      id = session!()
      {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)
      {:ok, _} = SessionStore.update_variable(id, :x, 2)
      [{_, _, pid, _}] = :ets.lookup(:dspex_bridge_sessions, id)
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^ref, :process, ^pid, :killed}

      new_pid =
        eventually(fn ->
          case :ets.lookup(:dspex_bridge_sessions, id) do
            [{_, _, p, _}] when p != pid -> p
            _ -> nil
          end
        end)

      assert Process.alive?(new_pid)
      assert {:ok, %Variable{value: 2, version: 2}} = SessionStore.get_variable(id, :x)
      assert {:ok, %Variable{value: 3, version: 3}} = SessionStore.update_variable(id, :x, 3)
      assert {:ok, [%{version: 3}, %{version: 2}, %{version: 1}]} = SessionStore.get_history(id, :x)
    end
  end

  describe "variables" do
    setup do
      {:ok, session: session!()}
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

    test "json values survive export and import, and rollback", %{session: s} do
      demos = [%{"question" => "2+2?", "answer" => "4"}]
      {:ok, _} = SessionStore.register_variable(s, "demos", :json, demos)
      {:ok, _} = SessionStore.update_variable(s, "demos", [])
      {:ok, bin} = SessionStore.export_session(s)
      {:ok, copy} = SessionStore.import_session(bin, session_id: unique_id())
      on_exit(fn -> SessionStore.delete_session(copy) end)
      assert {:ok, []} = SessionStore.get_value(copy, "demos")
      assert {:ok, %{value: ^demos, version: 3}} = SessionStore.rollback_variable(copy, "demos", 1)
    end

    test "string and atom names are distinct and come back as given", %{session: s} do
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      {:ok, _} = SessionStore.register_variable(s, "x", :integer, 2)
      assert {:ok, 1} = SessionStore.get_value(s, :x)
      assert {:ok, 2} = SessionStore.get_value(s, "x")
    end

    test "registering twice is refused and keeps the first", %{session: s} do
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      assert {:error, {:variable_exists, :x}} = SessionStore.register_variable(s, :x, :integer, 9)
      assert {:ok, 1} = SessionStore.get_value(s, :x)
    end

    test "unknown variable and unknown session are told apart", %{session: s} do
      assert {:error, {:variable_not_found, :nope}} = SessionStore.get_variable(s, :nope)
      assert {:error, :session_not_found} = SessionStore.get_variable("no_such_session", :x)
      assert {:error, :session_not_found} = SessionStore.update_variable("no_such_session", :x, 1)
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
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 5, constraints: [min: 0, max: 10])
      assert {:error, {:invalid_value, {:above_max, 10}}} = SessionStore.update_variable(s, :x, 11)

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
      s = session!(max_variables: 2)
      {:ok, _} = SessionStore.register_variable(s, :a, :integer, 1)
      {:ok, _} = SessionStore.register_variable(s, :b, :integer, 1)
      assert {:error, {:too_many_variables, 2}} = SessionStore.register_variable(s, :c, :integer, 1)
    end

    test "concurrent writers to one session: no lost update", %{session: s} do
      {:ok, _} = SessionStore.register_variable(s, :counter, :integer, 0)

      # Each writer retries on version conflicts, as an optimistic client must.
      increment = fn ->
        Enum.each(1..50, fn _ -> cas_increment(s, :counter) end)
      end

      1..8 |> Enum.map(fn _ -> Task.async(increment) end) |> Enum.each(&Task.await(&1, 30_000))
      assert {:ok, %Variable{value: 400, version: 401}} = SessionStore.get_variable(s, :counter)
    end
  end

  defp cas_increment(s, name) do
    {:ok, %Variable{value: v, version: ver}} = SessionStore.get_variable(s, name)

    case SessionStore.update_variable(s, name, v + 1, expected_version: ver) do
      {:ok, _} -> :ok
      {:error, {:version_mismatch, _}} -> cas_increment(s, name)
    end
  end

  describe "history and rollback" do
    test "keeps the last history_limit versions, newest first" do
      s = session!(history_limit: 3)
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 0)
      for i <- 1..5, do: {:ok, _} = SessionStore.update_variable(s, :x, i)
      assert {:ok, entries} = SessionStore.get_history(s, :x)
      assert Enum.map(entries, &{&1.version, &1.value}) == [{6, 5}, {5, 4}, {4, 3}]
    end

    test "rollback writes the old value as a new version" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :string, "a")
      {:ok, _} = SessionStore.update_variable(s, :x, "b")
      assert {:ok, %Variable{value: "a", version: 3}} = SessionStore.rollback_variable(s, :x, 1)
      {:ok, [latest | _]} = SessionStore.get_history(s, :x)
      assert latest.change == {:rollback, 1}
      assert {:error, {:version_not_found, 42}} = SessionStore.rollback_variable(s, :x, 42)
      assert {:error, {:invalid_option, {:version, 0}}} = SessionStore.rollback_variable(s, :x, 0)
    end

    test "rollback to a version that fell out of history is refused" do
      s = session!(history_limit: 2)
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 0)
      for i <- 1..3, do: {:ok, _} = SessionStore.update_variable(s, :x, i)
      assert {:error, {:version_not_found, 1}} = SessionStore.rollback_variable(s, :x, 1)
      assert {:ok, %Variable{value: 3, version: 4}} = SessionStore.get_variable(s, :x)
    end
  end

  describe "watchers" do
    test "a watcher gets every committed change, dead watchers are dropped" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      assert {:ok, %Variable{value: 1}} = SessionStore.watch(s, :x)
      {:ok, _} = SessionStore.update_variable(s, :x, 2)
      assert_receive {:dspex_variable_changed, ^s, :x, %{old: 1, new: 2, version: 2}}
      {:error, _} = SessionStore.update_variable(s, :x, "bad")
      {:ok, _} = SessionStore.rollback_variable(s, :x, 1)
      assert_receive {:dspex_variable_changed, ^s, :x, %{old: 2, new: 1, version: 3}}
      refute_received {:dspex_variable_changed, _, _, _}

      other = spawn(fn -> Process.sleep(:infinity) end)
      {:ok, _} = SessionStore.watch(s, :x, pid: other)
      [{_, _, pid, _}] = :ets.lookup(:dspex_bridge_sessions, s)
      assert map_size(:sys.get_state(pid).watchers[:x]) == 2
      Process.exit(other, :kill)
      eventually(fn -> map_size(:sys.get_state(pid).watchers[:x]) == 1 end)

      :ok = SessionStore.unwatch(s, :x)
      {:ok, _} = SessionStore.update_variable(s, :x, 5)
      refute_receive {:dspex_variable_changed, _, _, _}, 50
      assert :sys.get_state(pid).watchers == %{}
    end

    test "deleting a watched variable tells the watcher" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      {:ok, _} = SessionStore.watch(s, :x)
      :ok = SessionStore.delete_variable(s, :x)
      assert_receive {:dspex_variable_deleted, ^s, :x}
    end

    test "watching an unknown variable is an error" do
      s = session!()
      assert {:error, {:variable_not_found, :nope}} = SessionStore.watch(s, :nope)
    end
  end

  describe "export and import" do
    test "round trip keeps variables, versions, constraints and history" do
      s = session!(history_limit: 10, metadata: %{team: "x"})
      {:ok, _} = SessionStore.register_variable(s, :t, :float, 0.5, constraints: [max: 1.0])
      {:ok, _} = SessionStore.register_variable(s, "emb", :embedding, [1.0, 2.0])
      {:ok, _} = SessionStore.update_variable(s, :t, 0.75)
      {:ok, bin} = SessionStore.export_session(s)

      copy = unique_id("copy")
      assert {:ok, ^copy} = SessionStore.import_session(bin, session_id: copy)
      on_exit(fn -> SessionStore.delete_session(copy) end)

      {:ok, original} = SessionStore.list_variables(s)
      {:ok, imported} = SessionStore.list_variables(copy)
      assert Enum.map(imported, &%{&1 | session_id: s}) == original
      assert SessionStore.get_history(copy, :t) == SessionStore.get_history(s, :t)
      assert {:ok, %{metadata: %{team: "x"}, history_limit: 10}} = SessionStore.get_session(copy)

      # The import is a live session: constraints still hold and versions continue.
      assert {:error, {:invalid_value, _}} = SessionStore.update_variable(copy, :t, 2.0)
      assert {:ok, %Variable{version: 3}} = SessionStore.update_variable(copy, :t, 0.1)
    end

    test "importing over an existing session is refused and leaves it alone" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      {:ok, bin} = SessionStore.export_session(s)
      {:ok, _} = SessionStore.update_variable(s, :x, 2)
      assert {:error, {:session_exists, ^s}} = SessionStore.import_session(bin)
      assert {:ok, 2} = SessionStore.get_value(s, :x)
    end

    test "corrupt, truncated, foreign and future snapshots are refused" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      {:ok, bin} = SessionStore.export_session(s)
      size = byte_size(bin)

      <<head::binary-size(size - 1), last>> = bin

      assert {:error, {:invalid_snapshot, :checksum_mismatch}} =
               SessionStore.import_session(<<head::binary, Bitwise.bxor(last, 0x40)>>)

      assert {:error, {:invalid_snapshot, {:truncated, _}}} = SessionStore.import_session(head)
      assert {:error, {:invalid_snapshot, :bad_magic}} = SessionStore.import_session("hello world")
      <<magic::binary-size(4), _v::16, rest::binary>> = bin

      assert {:error, {:invalid_snapshot, {:unsupported_version, 2}}} =
               SessionStore.import_session(<<magic::binary, 2::little-16, rest::binary>>)

      assert {:error, {:invalid_snapshot, {:not_a_binary, 42}}} = SessionStore.import_session(42)
    end

    test "a well-framed payload that is not a session is refused" do
      {:ok, frame} = DSPex.Bridge.Native.snapshot_encode(:erlang.term_to_binary(%{hello: 1}))
      assert {:error, {:invalid_snapshot, :bad_structure}} = SessionStore.import_session(frame)
      {:ok, frame} = DSPex.Bridge.Native.snapshot_encode("not a term")
      assert {:error, {:invalid_snapshot, :bad_payload}} = SessionStore.import_session(frame)

      bad_var = %{
        format: 1,
        session: %{id: "evil", ttl: 1000, history_limit: 5, max_variables: 10, metadata: %{}},
        variables: [%{name: :x, type: :integer, value: "not an int", version: 1}],
        history: []
      }

      {:ok, frame} = DSPex.Bridge.Native.snapshot_encode(:erlang.term_to_binary(bad_var))

      assert {:error, {:invalid_snapshot, {:bad_variable, :x, {:invalid_value, _}}}} =
               SessionStore.import_session(frame)

      refute "evil" in SessionStore.list_sessions()
    end

    test "a large session round-trips through the dirty NIFs" do
      s = session!()
      updates = for i <- 1..2_000, do: {"v#{i}", :string, String.duplicate("x", 200)}
      for {n, t, v} <- updates, do: {:ok, _} = SessionStore.register_variable(s, n, t, v)
      {:ok, bin} = SessionStore.export_session(s)
      assert byte_size(bin) > DSPex.Bridge.Native.snapshot_dirty_threshold()
      copy = unique_id("copy")
      {:ok, ^copy} = SessionStore.import_session(bin, session_id: copy)
      on_exit(fn -> SessionStore.delete_session(copy) end)
      assert {:ok, %{variable_count: 2000}} = SessionStore.get_session(copy)
    end
  end

  describe "caller and context" do
    test "a foreign caller without rules is refused on every path; the owner is allowed" do
      s = session!()
      other = session!()
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
  end
end
