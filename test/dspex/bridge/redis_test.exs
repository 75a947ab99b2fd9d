defmodule DSPex.Bridge.RedisTest do
  # A real redis-server per module; the kill/restart test has its own.
  use ExUnit.Case, async: true

  alias DSPex.Bridge.{Redis, TestRedis}

  setup_all do
    server = TestRedis.start(password: "s3cret")
    on_exit(fn -> TestRedis.stop(server) end)
    {:ok, redis} = Redis.connect(TestRedis.url(server), password: "s3cret")
    %{server: server, redis: redis}
  end

  test "commands, pipelines, transactions and scripts", %{redis: redis} do
    key = "k#{System.unique_integer([:positive])}"
    assert {:ok, "PONG"} = Redis.command(redis, ["PING"])
    assert {:ok, :ok} = Redis.command(redis, ["SET", key, <<0, 255, "bytes">>])
    assert {:ok, <<0, 255, "bytes">>} = Redis.command(redis, ["GET", key])
    assert {:ok, nil} = Redis.command(redis, ["GET", key <> "missing"])
    assert {:error, {:redis, "WRONGTYPE", _}} = Redis.command(redis, ["LPUSH", key, "x"])

    n = key <> "n"
    assert {:ok, [1, 3, "3"]} = Redis.pipeline(redis, [["INCR", n], ["INCRBY", n, 2], ["GET", n]])

    # A refused command stands in its place; the others ran.
    assert {:ok, [4, {:error, {:redis, "WRONGTYPE", _}}, 5]} =
             Redis.pipeline(redis, [["INCR", n], ["LPUSH", n, "x"], ["INCR", n]])

    assert {:ok, [:ok, 1.5]} =
             Redis.transaction(redis, [["SET", n, 1], ["INCRBYFLOAT", n, 0.5]])
             |> then(fn {:ok, [ok, text]} -> {:ok, [ok, String.to_float(text)]} end)

    script = Redis.script("return {KEYS[1], tonumber(ARGV[1]) + 1}")
    assert {:ok, [^key, 42]} = Redis.eval(redis, script, [key], [41])
    # Loaded now: the second run goes by SHA-1.
    assert {:ok, 1} = Redis.command(redis, ["SCRIPT", "EXISTS", script.sha]) |> hd_ok()
    assert {:ok, [^key, 2]} = Redis.eval(redis, script, [key], [1])
  end

  test "many callers at once each get their own reply", %{redis: redis} do
    key = "c#{System.unique_integer([:positive])}"

    results =
      1..200
      |> Task.async_stream(fn i -> Redis.command(redis, ["INCR", key]) |> then(&{i, &1}) end,
        max_concurrency: 50
      )
      |> Enum.map(fn {:ok, {_i, {:ok, v}}} -> v end)

    assert Enum.sort(results) == Enum.to_list(1..200)
  end

  test "a caller's timeout leaves no late reply in its mailbox", %{redis: redis} do
    # The server sleeps 300 ms in a script; the caller gives up after 20 ms.
    slow =
      Redis.script(
        "local t = redis.call('TIME'); local s = t[1] * 1e6 + t[2]; " <>
          "while true do local n = redis.call('TIME'); if n[1] * 1e6 + n[2] - s > 300000 then break end end; return 1"
      )

    assert {:error, :timeout} = Redis.eval(redis, slow, [], [], timeout: 20)
    # The reply comes after 300 ms and must be dropped: nothing arrives.
    refute_receive {:dspex_redis, _, _}, 600
    assert {:ok, "PONG"} = Redis.command(redis, ["PING"])
  end

  test "a wrong or missing password is a clear error at connect", %{server: server} do
    assert {:error, {:auth_failed, _}} = Redis.connect(TestRedis.url(server), password: "wrong")
    url = TestRedis.url(server)
    assert {:ok, unauthenticated} = connect_without_auth(url)
    assert {:error, {:redis, "NOAUTH", _}} = Redis.command(unauthenticated, ["GET", "x"])
  end

  test "bad input is a clear error, and nothing is sent", %{redis: redis} do
    assert {:error, {:invalid_url, _}} = Redis.connect("http://nope")
    assert {:error, {:invalid_url, _}} = Redis.connect(:not_a_url)
    assert {:error, {:invalid_option, _}} = Redis.connect("redis://127.0.0.1:1", bogus: 1)
    assert {:error, {:invalid_option, _}} = Redis.connect("redis://127.0.0.1:1", timeout: -1)

    for bad <- [
          [],
          :ping,
          ["GET", :atom],
          ["GET", %{}],
          ["SET", "k", 18_446_744_073_709_551_616],
          ["A" | "b"]
        ] do
      assert {:error, {:invalid_argument, _}} = Redis.command(redis, bad)
    end

    assert {:error, {:invalid_argument, _}} = Redis.pipeline(redis, [])
    assert {:error, {:invalid_argument, _}} = Redis.pipeline(redis, [["PING"], :x])
    assert {:error, {:invalid_argument, _}} = Redis.command(:not_a_conn, ["PING"])
    assert {:error, {:invalid_option, _}} = Redis.command(redis, ["PING"], timeout: :soon)
    assert {:error, {:invalid_argument, _}} = Redis.eval(redis, "not a script", [], [])
  end

  test "a server that is not there is an error at connect, fast" do
    port = free_port()
    started = System.monotonic_time(:millisecond)

    assert {:error, {:unavailable, _}} =
             Redis.connect("redis://127.0.0.1:#{port}/0", connect_timeout: 500)

    assert System.monotonic_time(:millisecond) - started < 3_000
  end

  test "a killed server: calls fail fast and clearly, and work again once it is back" do
    server = TestRedis.start()
    {:ok, redis} = Redis.connect(TestRedis.url(server), timeout: 1_000, retries: 1)
    assert {:ok, :ok} = Redis.command(redis, ["SET", "survives", "yes"])

    TestRedis.kill(server)
    started = System.monotonic_time(:millisecond)
    assert {:error, {:unavailable, _}} = Redis.command(redis, ["GET", "survives"])
    assert System.monotonic_time(:millisecond) - started < 3_000

    server = TestRedis.restart(server)
    on_exit(fn -> TestRedis.stop(server) end)
    # The manager reconnects on the next command; the acknowledged write is there.
    assert {:ok, "yes"} = eventually(fn -> Redis.command(redis, ["GET", "survives"]) end)
  end

  defp connect_without_auth(url) do
    # NOAUTH comes with the first command, not at connect: HELLO is not sent without a user.
    Redis.connect(url)
  end

  defp hd_ok({:ok, [x]}), do: {:ok, x}

  defp eventually(fun, tries \\ 50) do
    case fun.() do
      {:ok, _} = ok ->
        ok

      {:error, _} = error when tries == 0 ->
        error

      {:error, _} ->
        Process.sleep(50)
        eventually(fun, tries - 1)
    end
  end

  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end
end
