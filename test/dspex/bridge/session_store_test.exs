defmodule DSPex.Bridge.SessionStoreTest do
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{SessionStore, Variable}

  doctest DSPex.Bridge.SessionStore

  use DSPex.Bridge.SessionStoreSuite, backend: :local

  describe "sessions" do
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

  describe "watchers" do
    # What watchers are told is in the suite both backends run; this is the session
    # process's own bookkeeping.
    test "dead watchers are dropped, and unwatch leaves none" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      assert {:ok, %Variable{value: 1}} = SessionStore.watch(s, :x)
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
  end

  describe "export and import" do
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
end
