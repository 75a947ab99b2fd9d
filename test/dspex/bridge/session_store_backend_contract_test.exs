defmodule DSPex.Bridge.SessionStoreBackendContractTest do
  @moduledoc """
  The `DSPex.Bridge.SessionStore.Backend` behaviour, called directly on both of its
  implementations with the same steps and the same expected results; a snapshot exported
  by either backend's callback imports into the other's.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{TestRedis, Variable}
  alias DSPex.Bridge.SessionStore.{Codec, LocalBackend, RedisBackend}

  setup_all do
    TestRedis.start_backend!()
    :ok
  end

  defp meta(id) do
    %{
      id: id,
      created_at: System.system_time(:millisecond),
      ttl: 60_000,
      history_limit: 10,
      max_variables: 100,
      metadata: %{owner: "contract"},
      propagation: :sync
    }
  end

  defp new_id, do: "contract_#{System.unique_integer([:positive])}"

  for backend <- [LocalBackend, RedisBackend] do
    describe "#{inspect(backend)}" do
      @backend backend

      test "sessions: create, exists, get, list, delete" do
        id = new_id()
        assert {:ok, ^id} = @backend.create_session(meta(id))
        assert {:error, {:session_exists, ^id}} = @backend.create_session(meta(id))

        assert {:ok, %{id: ^id, variable_count: 0, metadata: %{owner: "contract"}}} =
                 @backend.get_session(id)

        assert id in @backend.list_sessions()
        assert :ok = @backend.delete_session(id)
        assert {:error, :session_not_found} = @backend.get_session(id)
        assert {:error, :session_not_found} = @backend.get_variable(id, :x)
        refute id in @backend.list_sessions()
      end

      test "variables: register, read, compare-and-set, batches, history, rollback, delete" do
        id = new_id()
        {:ok, _} = @backend.create_session(meta(id))

        assert {:ok, %Variable{value: 1, version: 1, type: :integer}} =
                 @backend.register_variable(id, :x, :integer, 1, %{constraints: %{min: 0}})

        assert {:error, {:variable_exists, :x}} =
                 @backend.register_variable(id, :x, :integer, 1, %{})

        {:ok, _} = @backend.register_variable(id, "y", :string, "a", %{})
        assert {:ok, %Variable{value: 1}} = @backend.get_variable(id, :x)

        assert {:ok, [%Variable{value: 2, version: 2}]} =
                 @backend.update_variables(id, [{:x, 2}], %{expected_versions: %{x: 1}})

        assert {:error, {:version_mismatch, 2}} =
                 @backend.update_variables(id, [{:x, 3}], %{expected_versions: %{x: 1}})

        # All or nothing: y's bad value keeps x as it was.
        assert {:error, {"y", _}} = @backend.update_variables(id, [{:x, 5}, {"y", 7}], %{})
        assert {:ok, %Variable{value: 2, version: 2}} = @backend.get_variable(id, :x)
        assert {:error, {:x, _}} = @backend.update_variables(id, [{:x, -1}, {"y", "b"}], %{})

        assert {:ok, [%{version: 2, value: 2}, %{version: 1, value: 1}]} =
                 @backend.get_history(id, :x)

        assert {:ok, %Variable{value: 1, version: 3}} = @backend.rollback_variable(id, :x, 1)
        assert {:error, {:version_not_found, 99}} = @backend.rollback_variable(id, :x, 99)

        assert {:ok, [%Variable{name: :x}, %Variable{name: "y"}]} =
                 @backend.list_variables(id) |> sorted()

        assert :ok = @backend.delete_variable(id, :x)
        assert {:error, {:variable_not_found, :x}} = @backend.get_variable(id, :x)
        assert {:error, {:variable_not_found, :x}} = @backend.delete_variable(id, :x)
        :ok = @backend.delete_session(id)
      end

      test "watches: a change is sent, and nothing after unwatch" do
        id = new_id()
        {:ok, _} = @backend.create_session(meta(id))
        {:ok, _} = @backend.register_variable(id, :w, :integer, 0, %{})
        assert {:ok, %Variable{value: 0}} = @backend.watch(id, :w, self())
        {:ok, _} = @backend.update_variables(id, [{:w, 1}], %{})
        assert_receive {:dspex_variable_changed, ^id, :w, %{old: 0, new: 1, version: 2}}, 5_000
        assert :ok = @backend.unwatch(id, :w, self())
        {:ok, _} = @backend.update_variables(id, [{:w, 2}], %{})
        # A change published before the unwatch would have come first; this one must not.
        {:ok, _} = @backend.watch(id, :w, self())
        {:ok, _} = @backend.update_variables(id, [{:w, 3}], %{})
        assert_receive {:dspex_variable_changed, ^id, :w, %{new: 3}}, 5_000
        refute_received {:dspex_variable_changed, ^id, :w, %{new: 2}}
        :ok = @backend.delete_session(id)
      end

      test "a snapshot exported here imports into the other backend, and back" do
        other = if @backend == LocalBackend, do: RedisBackend, else: LocalBackend
        id = new_id()
        {:ok, _} = @backend.create_session(meta(id))
        {:ok, _} = @backend.register_variable(id, :a, :float, 0.5, %{})
        {:ok, _} = @backend.update_variables(id, [{:a, 0.75}], %{})
        assert {:ok, binary} = @backend.export_session(id)
        :ok = @backend.delete_session(id)

        {:ok, meta, vars, hist} = Codec.decode(binary)
        edges = DSPex.Bridge.Native.graph_edges(meta.core)
        assert {:ok, ^id} = other.import_session(meta, vars, hist, edges)
        assert {:ok, %Variable{value: 0.75, version: 2}} = other.get_variable(id, :a)
        assert {:ok, [%{value: 0.75}, %{value: 0.5}]} = other.get_history(id, :a)

        {:ok, binary} = other.export_session(id)
        :ok = other.delete_session(id)
        {:ok, meta, vars, hist} = Codec.decode(binary)
        edges = DSPex.Bridge.Native.graph_edges(meta.core)
        assert {:ok, ^id} = @backend.import_session(meta, vars, hist, edges)
        assert {:ok, %Variable{value: 0.75, version: 2}} = @backend.get_variable(id, :a)
        :ok = @backend.delete_session(id)
      end
    end
  end

  defp sorted({:ok, vars}), do: {:ok, Enum.sort_by(vars, &to_string(&1.name))}
end
