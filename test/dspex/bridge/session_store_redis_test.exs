defmodule DSPex.Bridge.SessionStoreRedisTest do
  # One Redis backend per node, and these tests stop the server: they must not overlap
  # the async modules, whose unknown sessions are looked up on Redis while it runs.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{SessionStore, TestRedis, Variable}
  alias DSPex.Bridge.SessionStore.RedisBackend

  use DSPex.Bridge.SessionStoreSuite, backend: :redis

  setup_all do
    %{server: TestRedis.start_backend!(password: "suite-pw")}
  end

  test "a Redis session is not on this node, and a local one cannot shadow it" do
    id = unique_id()
    assert {:ok, ^id} = SessionStore.create_session(id, backend: :redis)
    refute :ets.member(:dspex_bridge_sessions, id)
    assert {:error, {:session_exists, ^id}} = SessionStore.create_session(id)
    assert {:error, {:session_exists, ^id}} = SessionStore.create_session(id, backend: :redis)
    :ok = SessionStore.delete_session(id)
  end

  test "the configured default backend: new sessions and imports go to Redis", %{server: server} do
    alias DSPex.Bridge.SessionStore.Backends
    previous = Application.get_env(:dspex_bridge, :backend)
    on_exit(fn -> restore(:backend, previous) end)

    Application.put_env(
      :dspex_bridge,
      :backend,
      {:redis, url: TestRedis.url(server), password: "suite-pw"}
    )

    assert Backends.default() == :redis
    assert [{DSPex.Bridge.SessionStore.RedisBackend, opts}] = Backends.children()
    assert opts[:url] == TestRedis.url(server)

    id = unique_id()
    assert {:ok, ^id} = SessionStore.create_session(id)
    on_exit(fn -> SessionStore.delete_session(id) end)
    refute :ets.member(:dspex_bridge_sessions, id)
    assert {:ok, %{id: ^id}} = SessionStore.get_session(id)

    Application.put_env(:dspex_bridge, :backend, :local)
    assert Backends.children() == []
    local = unique_id()
    assert {:ok, ^local} = SessionStore.create_session(local)
    on_exit(fn -> SessionStore.delete_session(local) end)
    assert :ets.member(:dspex_bridge_sessions, local)
  end

  test "a backend that is not a backend is a clear error" do
    assert {:error, {:invalid_option, {:backend, :bogus}}} =
             SessionStore.create_session(unique_id(), backend: :bogus)

    {:ok, bin} = SessionStore.export_session(suite_session!())

    assert {:error, {:invalid_option, {:backend, "redis"}}} =
             SessionStore.import_session(bin, session_id: unique_id(), backend: "redis")
  end

  test "another session's caller is denied, and learns nothing" do
    id = suite_session!()
    {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)
    assert {:error, :access_denied} = SessionStore.get_variable(id, :x, caller: "intruder")
    assert {:error, :access_denied} = SessionStore.update_variable(id, :x, 2, caller: "intruder")
    assert {:ok, %Variable{value: 1, version: 1}} = SessionStore.get_variable(id, :x)
  end

  test "what this backend does not do yet is a clear error, and nothing changes" do
    id = suite_session!()
    {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)

    assert {:error, {:not_supported, :compute}} =
             SessionStore.register_variable(id, :y, :integer, nil,
               compute: {fn %{x: x} -> x end, [:x]}
             )

    # A token is good only while its lock is held.
    assert {:error, :stale_token} = SessionStore.update_variable(id, :x, 2, lock_token: 1)
    {:ok, _} = SessionStore.register_variable(id, :y, :integer, 1)

    assert {:error, {:not_supported, {DSPex.Bridge.DependencyManager, :define_computed}}} =
             DSPex.Bridge.DependencyManager.define_computed(id, :y, {Kernel, :map_size}, [:x])

    assert {:ok, [%Variable{name: :x, version: 1}, %Variable{name: :y}]} =
             SessionStore.list_variables(id)
  end

  test "a session moves between the backends by export and import" do
    local = session!(history_limit: 5)
    {:ok, _} = SessionStore.register_variable(local, :t, :float, 0.5, constraints: [max: 1.0])
    {:ok, _} = SessionStore.update_variable(local, :t, 0.7)
    {:ok, _} = SessionStore.register_variable(local, :u, :integer, 1)
    :ok = DSPex.Bridge.DependencyManager.add_dependency(local, :t, :u)
    {:ok, bin} = SessionStore.export_session(local)

    on_redis = unique_id("to_redis")

    assert {:ok, ^on_redis} =
             SessionStore.import_session(bin, session_id: on_redis, backend: :redis)

    on_exit(fn -> SessionStore.delete_session(on_redis) end)
    refute :ets.member(:dspex_bridge_sessions, on_redis)
    assert {:ok, %Variable{value: 0.7, version: 2}} = SessionStore.get_variable(on_redis, :t)
    assert SessionStore.get_history(on_redis, :t) == SessionStore.get_history(local, :t)
    assert {:ok, [:u]} = DSPex.Bridge.DependencyManager.get_dependents(on_redis, :t)

    assert {:error, :would_create_cycle} =
             DSPex.Bridge.DependencyManager.add_dependency(on_redis, :u, :t)

    {:ok, _} = SessionStore.update_variable(on_redis, :t, 0.9)
    {:ok, back} = SessionStore.export_session(on_redis)
    home = unique_id("back_home")
    assert {:ok, ^home} = SessionStore.import_session(back, session_id: home, backend: :local)
    on_exit(fn -> SessionStore.delete_session(home) end)
    assert :ets.member(:dspex_bridge_sessions, home)
    assert {:ok, %Variable{value: 0.9, version: 3}} = SessionStore.get_variable(home, :t)
    assert {:ok, [%{version: 3}, %{version: 2}, %{version: 1}]} = SessionStore.get_history(home, :t)
    assert {:ok, [:u]} = DSPex.Bridge.DependencyManager.get_dependents(home, :t)

    # What Redis sessions cannot hold yet is refused whole.
    with_compute = session!()
    {:ok, _} = SessionStore.register_variable(with_compute, :a, :integer, 1)

    {:ok, _} =
      SessionStore.register_variable(with_compute, :b, :integer, nil,
        compute: {{Kernel, :map_size}, [:a]}
      )

    {:ok, bin} = SessionStore.export_session(with_compute)

    assert {:error, {:not_supported, _}} =
             SessionStore.import_session(bin, session_id: unique_id(), backend: :redis)
  end

  test "deleting a variable takes its edges with it" do
    id = suite_session!()
    for v <- [:a, :b, :c], do: {:ok, _} = SessionStore.register_variable(id, v, :integer, 1)
    :ok = DSPex.Bridge.DependencyManager.add_dependency(id, :a, :b)
    :ok = DSPex.Bridge.DependencyManager.add_dependency(id, :b, :c)
    :ok = SessionStore.delete_variable(id, :b)
    assert {:ok, []} = DSPex.Bridge.DependencyManager.get_dependents(id, :a)
    assert {:ok, []} = DSPex.Bridge.DependencyManager.get_dependencies(id, :c)
  end

  test "a session outlives this node's view of it: another connection sees it", %{server: server} do
    id = suite_session!()
    {:ok, _} = SessionStore.register_variable(id, "shared", :string, "hello")
    {:ok, redis} = DSPex.Bridge.Redis.connect(TestRedis.url(server), password: "suite-pw")
    key = "dspex:{" <> RedisBackend.encode_id(id) <> "}"
    assert {:ok, 1} = DSPex.Bridge.Redis.command(redis, ["HEXISTS", key, "n:sshared"])
  end

  defp restore(key, nil), do: Application.delete_env(:dspex_bridge, key)
  defp restore(key, value), do: Application.put_env(:dspex_bridge, key, value)
end
