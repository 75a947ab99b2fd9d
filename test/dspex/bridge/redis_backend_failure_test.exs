defmodule DSPex.Bridge.RedisBackendFailureTest do
  # A Redis server of its own, killed and restarted; the backend is one per node, so this
  # module runs alone.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{SessionStore, TestRedis, Variable}
  alias DSPex.Bridge.SessionStore.RedisBackend

  @moduletag timeout: 120_000

  test "a wrong password stops the backend at start, with the reason" do
    server = TestRedis.start(password: "right")
    on_exit(fn -> TestRedis.stop(server) end)

    assert {:error, {{:redis_connect_failed, {:auth_failed, _}}, _child}} =
             start_supervised({RedisBackend, url: TestRedis.url(server), password: "wrong"})

    assert {:error, {{:redis_connect_failed, {:unavailable, _}}, _child}} =
             start_supervised({RedisBackend, url: "redis://127.0.0.1:1/0"})

    assert {:error, {{:invalid_option, {:missing, :url}}, _}} = start_supervised({RedisBackend, []})
    assert RedisBackend.lookup() == nil
  end

  test "with no Redis backend running, asking for one is a clear error" do
    assert RedisBackend.lookup() == nil

    assert {:error, {:backend_not_started, :redis}} =
             SessionStore.create_session(unique_id(), backend: :redis)

    {:ok, bin} = SessionStore.export_session(session!())

    assert {:error, {:backend_not_started, :redis}} =
             SessionStore.import_session(bin, session_id: unique_id(), backend: :redis)
  end

  test "kill -9 of Redis: every acknowledged write is there after the restart, errors while it was down were clear and fast" do
    server = TestRedis.start()
    start_supervised!({RedisBackend, url: TestRedis.url(server), timeout: 1_000})
    id = session!(backend: :redis, history_limit: 10_000)
    {:ok, _} = SessionStore.register_variable(id, :n, :integer, 0)

    test_pid = self()
    writer = Task.async(fn -> write_until_stopped(id, test_pid, 1, [], []) end)
    assert_receive {:acked, 100}, 10_000

    TestRedis.kill(server)
    # While it is down, a call fails fast and says why.
    {micros, result} = :timer.tc(fn -> SessionStore.get_variable(id, :n) end)
    assert result == {:error, :backend_unavailable}
    assert micros < 2_000_000

    server = TestRedis.restart(server)
    on_exit(fn -> TestRedis.stop(server) end)
    assert %Variable{} = eventually(fn -> ok_value(SessionStore.get_variable(id, :n)) end, 20_000)

    # Writes go on after the restart.
    send(writer.pid, {:continue_until, 50})
    assert_receive :resumed, 20_000
    send(writer.pid, :stop)
    {acked, errors} = Task.await(writer, 30_000)

    assert errors != [], "the writer never saw the server down"
    assert Enum.all?(errors, &(&1 == :backend_unavailable)), inspect(Enum.uniq(errors))

    {:ok, history} = SessionStore.get_history(id, :n)
    stored = Map.new(history, &{&1.version, &1.value})

    for {version, value} <- acked do
      assert stored[version] == value, "acknowledged write #{value} (version #{version}) is lost"
    end
  end

  test "a watch ends with :backend_unavailable when Redis goes away, and works again after" do
    server = TestRedis.start()
    start_supervised!({RedisBackend, url: TestRedis.url(server), timeout: 1_000})
    id = session!(backend: :redis)
    {:ok, _} = SessionStore.register_variable(id, :x, :integer, 0)
    {:ok, _} = SessionStore.watch(id, :x)

    TestRedis.kill(server)
    assert_receive {:dspex_watch_lost, ^id, :x, :backend_unavailable}, 5_000

    server = TestRedis.restart(server)
    on_exit(fn -> TestRedis.stop(server) end)
    assert {:ok, _} = eventually(fn -> ok_or_nil(SessionStore.watch(id, :x)) end, 20_000)
    {:ok, _} = SessionStore.update_variable(id, :x, 1)
    assert_receive {:dspex_variable_changed, ^id, :x, %{old: 0, new: 1}}, 5_000
  end

  defp ok_or_nil({:ok, _} = ok), do: ok
  defp ok_or_nil(_), do: nil

  # Writes n = 1, 2, ... one at a time; reports the 100th acknowledged write, and after a
  # {:continue_until, k} the k-th acknowledged write after it. Returns the acknowledged
  # {version, value} pairs and the errors.
  defp write_until_stopped(id, test_pid, i, acked, errors, resume \\ nil) do
    receive do
      :stop ->
        {acked, errors}

      {:continue_until, k} ->
        write_until_stopped(id, test_pid, i, acked, errors, {length(acked), k})
    after
      0 ->
        case SessionStore.update_variable(id, :n, i) do
          {:ok, %Variable{version: v}} ->
            acked = [{v, i} | acked]
            if length(acked) == 100, do: send(test_pid, {:acked, 100})
            resume = report_resumed(resume, length(acked), test_pid)
            write_until_stopped(id, test_pid, i + 1, acked, errors, resume)

          {:error, reason} ->
            # Down: do not spin; the breaker answers at once.
            Process.sleep(5)
            write_until_stopped(id, test_pid, i + 1, acked, [reason | errors], resume)
        end
    end
  end

  defp report_resumed({from, k}, count, test_pid) when count - from >= k do
    send(test_pid, :resumed)
    nil
  end

  defp report_resumed(resume, _count, _test_pid), do: resume

  defp ok_value({:ok, v}), do: v
  defp ok_value(_), do: nil
end
