defmodule DSPex.Bridge.PythonRemoteTest do
  @moduledoc """
  Remote workers over gRPC, with real interpreters dialling the server the NIF hosts: they
  join a pool with its token and serve calls as local workers do; wrong tokens, garbage and
  silent streams are refused without hurting the server; a dropped connection fails its
  calls and the worker dials again.
  """
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers
  import ExUnit.CaptureLog

  alias DSPex.Bridge.{CircuitBreaker, Events, Python, PythonWorker, SessionStore}

  @moduletag timeout: 120_000
  @token "remote-test-token-0123456789"

  setup do
    pool = :"remote_#{System.unique_integer([:positive])}"
    {:ok, _} = PythonWorker.start_pool(pool, python_opts(size: 0, accept_remote: [token: @token]))
    on_exit(fn -> PythonWorker.stop_pool(pool) end)
    {host, port} = PythonWorker.listen_address()
    {:ok, pool: pool, target: "#{host}:#{port}"}
  end

  test "a remote worker joins with its token and serves calls, ctx included",
       %{pool: pool, target: target} do
    remote_worker!(target, pool)

    assert [%{remote: true, os_pid: nil, peer: "127.0.0.1:" <> _, tools: tools}] =
             PythonWorker.workers(pool)

    assert "echo" in tools

    assert {:ok, %{"a" => [1, 2.5, "x"]}} =
             PythonWorker.call(pool, "echo", %{value: %{a: [1, 2.5, "x"]}})

    :ok = CircuitBreaker.start_breaker(pool, failure_threshold: 1_000)
    on_exit(fn -> CircuitBreaker.delete_breaker(pool) end)
    s = session!()
    {:ok, _} = SessionStore.register_variable(s, :temperature, :float, 0.5, constraints: [max: 2.0])
    assert {:ok, ^s} = Python.call(s, "session_of", %{}, pool: pool)
    assert {:ok, 2} = Python.call(s, "write", %{name: "temperature", value: 0.9}, pool: pool)
    assert {:ok, %{value: 0.9, version: 2}} = SessionStore.get_variable(s, :temperature)

    # 10 MB each way.
    big = :binary.copy("x", 10_000_000)
    assert {:ok, ^big} = PythonWorker.call(pool, "echo", %{value: big}, 30_000)
  end

  test "local and remote workers of one pool serve calls alike", %{target: target} do
    pool = :"mixed_#{System.unique_integer([:positive])}"
    {:ok, _} = PythonWorker.start_pool(pool, python_opts(size: 1, accept_remote: [token: @token]))
    on_exit(fn -> PythonWorker.stop_pool(pool) end)
    eventually(fn -> PythonWorker.call(pool, "ping", %{}) == {:ok, "pong"} end, 20_000)
    remote_os_pid = remote_worker!(target, pool)
    [local_os_pid] = PythonWorker.os_pids(pool)

    # Round robin without a session reaches both.
    served = for _ <- 1..20, into: MapSet.new(), do: elem(PythonWorker.call(pool, "pid", %{}), 1)
    assert served == MapSet.new([local_os_pid, remote_os_pid])
  end

  test "a wrong or missing token, or a pool that takes no remote workers, is refused and logged",
       %{pool: pool, target: target} do
    Events.subscribe([:dspex, :bridge, :python, :worker_refused])

    log =
      capture_log(fn ->
        assert {_, 2} = run_worker(target, pool, token: "not-the-token-at-all")
        assert {_, 2} = run_worker(target, pool, token: "")
        assert {out, 2} = run_worker(target, :no_such_pool, token: @token)
        assert out =~ "PERMISSION_DENIED"
      end)

    assert log =~ "wrong or missing token"
    assert log =~ "does not accept remote workers"

    assert_receive {:dspex_event, [:dspex, :bridge, :python, :worker_refused], _,
                    %{reason: "wrong or missing token"}}

    assert PythonWorker.workers(pool) == []
    assert {:error, :worker_unavailable} = PythonWorker.call(pool, "ping", %{})
  end

  test "garbage on the port, a first message that is no frame, a silent stream: refused, the server fine",
       %{pool: pool, target: target} do
    [host, port] = String.split(target, ":")
    port = String.to_integer(port)

    # Raw bytes that are not HTTP/2 at all.
    {:ok, socket} = :gen_tcp.connect(String.to_charlist(host), port, [:binary, active: false])
    :ok = :gen_tcp.send(socket, :crypto.strong_rand_bytes(4096))
    assert {:error, :closed} = drain(socket)

    previous = Application.get_env(:dspex_bridge, :grpc, [])
    Application.put_env(:dspex_bridge, :grpc, Keyword.put(previous, :hello_timeout_ms, 300))
    on_exit(fn -> Application.put_env(:dspex_bridge, :grpc, previous) end)

    capture_log(fn ->
      assert probe(target, "garbage") == "INVALID_ARGUMENT"
      assert probe(target, "silent") == "DEADLINE_EXCEEDED"
      assert probe(target, "no_such_method") == "UNIMPLEMENTED"
    end)

    remote_worker!(target, pool)
    assert {:ok, "pong"} = PythonWorker.call(pool, "ping", %{})
  end

  test "a dropped connection fails its calls; the worker dials again and serves",
       %{pool: pool, target: target} do
    remote_worker!(target, pool)
    [%{slot: first}] = PythonWorker.workers(pool)
    [{member, _}] = Registry.lookup(PythonWorker.members(), pool)

    caller = Task.async(fn -> PythonWorker.call(pool, "sleep", %{ms: 30_000}, 20_000) end)
    eventually(fn -> match?([%{in_flight: 1}], PythonWorker.workers(pool)) end)
    started = System.monotonic_time(:millisecond)
    Process.exit(member, :kill)
    assert {:error, :worker_unavailable} = Task.await(caller)
    assert System.monotonic_time(:millisecond) - started < 5_000

    eventually(
      fn -> match?([%{slot: slot}] when slot != first, PythonWorker.workers(pool)) end,
      15_000
    )

    assert {:ok, "pong"} = PythonWorker.call(pool, "ping", %{})
  end

  test "a remote interpreter killed mid-call: its caller gets an error before the deadline",
       %{pool: pool, target: target} do
    os_pid = remote_worker!(target, pool)
    caller = Task.async(fn -> PythonWorker.call(pool, "sleep", %{ms: 30_000}, 25_000) end)
    eventually(fn -> match?([%{in_flight: 1}], PythonWorker.workers(pool)) end)
    started = System.monotonic_time(:millisecond)
    System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    assert {:error, {:worker_exited, :disconnected}} = Task.await(caller, 30_000)
    assert System.monotonic_time(:millisecond) - started < 10_000
    eventually(fn -> PythonWorker.workers(pool) == [] end)
  end

  test "bad remote options are refused with a clear error" do
    for opts <- [
          [accept_remote: [token: "short"]],
          [accept_remote: :yes],
          [accept_remote: [token: 42]],
          [accept_remote: [token: @token, extra: 1]],
          [size: 0]
        ] do
      assert {:error, {:invalid_option, _}} =
               PythonWorker.start_pool(:bad_remote, python_opts(opts))
    end

    assert {:error, {:unknown_pool, :bad_remote}} = PythonWorker.stop_pool(:bad_remote)
  end

  # -- helpers

  # The interpreter the pools use (see DSPex.Bridge.PythonWorker).
  defp python do
    Application.get_env(:dspex_bridge, :python) || System.get_env("DSPEX_PYTHON") || "python3"
  end

  defp env(extra) do
    path = Enum.join([Path.expand("priv/python"), Path.expand("test/support/python")], ":")
    [{"PYTHONPATH", path} | extra]
  end

  # Runs a worker to its end (a refused one exits 2): {output, status}.
  defp run_worker(target, pool, token: token) do
    args = ["-m", "dspex_bridge.worker", "--connect", target, "--pool", to_string(pool)]
    System.cmd(python(), args, env: env([{"DSPEX_BRIDGE_TOKEN", token}]), stderr_to_stdout: true)
  end

  # Starts a remote worker that serves `pool` until the test ends; its OS pid once joined.
  defp remote_worker!(target, pool) do
    args =
      ["-m", "dspex_bridge.worker", "--connect", target, "--pool", to_string(pool)] ++
        ["--module", "fault_tools"]

    env = for {k, v} <- env([{"DSPEX_BRIDGE_TOKEN", @token}]), do: {~c"#{k}", ~c"#{v}"}
    port = Port.open({:spawn_executable, python()}, [:binary, :exit_status, args: args, env: env])
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true) end)
    before = length(PythonWorker.workers(pool))
    eventually(fn -> length(PythonWorker.workers(pool)) > before end, 20_000)
    os_pid
  end

  defp probe(target, mode) do
    script = Path.expand("test/support/python/grpc_probe.py")
    {out, 0} = System.cmd(python(), [script, target, mode], stderr_to_stdout: true)
    out |> String.split("\n", trim: true) |> List.last()
  end

  defp drain(socket) do
    case :gen_tcp.recv(socket, 0, 5_000) do
      {:ok, _} -> drain(socket)
      other -> other
    end
  end
end
