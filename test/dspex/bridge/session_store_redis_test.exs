defmodule DSPex.Bridge.SessionStoreRedisTest do
  # One Redis backend per node, and these tests stop the server: they must not overlap
  # the async modules, whose unknown sessions are looked up on Redis while it runs.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{SessionStore, TestRedis, Variable}
  alias DSPex.Bridge.SessionStore.RedisBackend

  use DSPex.Bridge.SessionStoreSuite, backend: :redis

  setup_all do
    server = TestRedis.start(password: "suite-pw")
    on_exit(fn -> TestRedis.stop(server) end)
    start_supervised!({RedisBackend, url: TestRedis.url(server), password: "suite-pw"})
    %{server: server}
  end

  test "a Redis session is not on this node, and a local one cannot shadow it" do
    id = unique_id()
    assert {:ok, ^id} = SessionStore.create_session(id, backend: :redis)
    refute :ets.member(:dspex_bridge_sessions, id)
    assert {:error, {:session_exists, ^id}} = SessionStore.create_session(id)
    assert {:error, {:session_exists, ^id}} = SessionStore.create_session(id, backend: :redis)
    :ok = SessionStore.delete_session(id)
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

    assert {:error, {:not_supported, :access_mode}} =
             SessionStore.register_variable(id, :z, :integer, 1, access_mode: :public)

    assert {:error, {:not_supported, :export_session}} = SessionStore.export_session(id)

    # A token is good only while its lock is held.
    assert {:error, :stale_token} = SessionStore.update_variable(id, :x, 2, lock_token: 1)
    {:ok, _} = SessionStore.register_variable(id, :y, :integer, 1)

    assert {:error, {:not_supported, DSPex.Bridge.DependencyManager}} =
             DSPex.Bridge.DependencyManager.add_dependency(id, :x, :y)

    assert {:ok, [%Variable{name: :x, version: 1}, %Variable{name: :y}]} =
             SessionStore.list_variables(id)
  end

  test "a session outlives this node's view of it: another connection sees it", %{server: server} do
    id = suite_session!()
    {:ok, _} = SessionStore.register_variable(id, "shared", :string, "hello")
    {:ok, redis} = DSPex.Bridge.Redis.connect(TestRedis.url(server), password: "suite-pw")
    key = "dspex:{" <> RedisBackend.encode_id(id) <> "}"
    assert {:ok, 1} = DSPex.Bridge.Redis.command(redis, ["HEXISTS", key, "n:sshared"])
  end
end
