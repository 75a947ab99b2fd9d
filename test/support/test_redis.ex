defmodule DSPex.Bridge.TestRedis do
  @moduledoc false
  # A real redis-server (Debian's package) for a test: on a free loopback port, with its
  # data in a fresh directory, append-only with `appendfsync always` so that every write it
  # acknowledged survives a kill -9. It runs under a shell that kills it when its stdin
  # closes, so it never outlives the test VM.

  defstruct [:port, :os_pid, :dir, :password, :shell, :tls_port]

  @start_timeout 10_000

  @doc """
  Starts a server. Options: `password:`, `dir:` (reuse data, for a restart), `port:`, and
  `tls:` a map of `tls_certificates/1` to also serve TLS on `tls_port` (clients must show a
  certificate the CA signed).
  """
  def start(opts \\ []) do
    exe = System.find_executable("redis-server") || raise "redis-server is not installed"
    dir = Keyword.get_lazy(opts, :dir, &fresh_dir/0)
    port = Keyword.get_lazy(opts, :port, &free_port/0)
    password = Keyword.get(opts, :password)
    tls = Keyword.get(opts, :tls)
    tls_port = if tls, do: free_port()

    tls_args =
      if tls do
        [
          "--tls-port #{tls_port}",
          "--tls-cert-file #{tls.server_cert}",
          "--tls-key-file #{tls.server_key}",
          "--tls-ca-cert-file #{tls.ca}",
          "--tls-auth-clients yes"
        ]
      else
        []
      end

    args =
      [
        "--port #{port}",
        "--bind 127.0.0.1",
        "--dir #{dir}",
        "--save ''",
        "--appendonly yes",
        "--appendfsync always",
        "--daemonize no",
        "--logfile ''"
      ] ++ if(password, do: ["--requirepass #{password}"], else: []) ++ tls_args

    script =
      "#{exe} #{Enum.join(args, " ")} >#{dir}/server.log 2>&1 & pid=$!; echo $pid; " <>
        "read _; kill -9 $pid 2>/dev/null"

    shell = Port.open({:spawn_executable, "/bin/sh"}, [:binary, args: ["-c", script]])
    os_pid = read_pid(shell)

    server = %__MODULE__{
      port: port,
      os_pid: os_pid,
      dir: dir,
      password: password,
      shell: shell,
      tls_port: tls_port
    }

    await_ready(server, System.monotonic_time(:millisecond) + @start_timeout)
    server
  end

  @doc """
  For a test module's `setup_all`: a server of its own (stopped at the end) and this node's
  Redis backend on it (`backend_opts` added). Returns the server.
  """
  def start_backend!(server_opts \\ [], backend_opts \\ []) do
    server = start(server_opts)
    ExUnit.Callbacks.on_exit(fn -> stop(server) end)
    password = if server.password, do: [password: server.password], else: []
    backend = [url: url(server)] ++ password ++ backend_opts
    ExUnit.Callbacks.start_supervised!({DSPex.Bridge.SessionStore.RedisBackend, backend})
    server
  end

  @doc "The server's URL."
  def url(%__MODULE__{port: port}), do: "redis://127.0.0.1:#{port}/0"

  @doc "The server's TLS URL (started with `tls:`)."
  def tls_url(%__MODULE__{tls_port: port}) when is_integer(port),
    do: "rediss://127.0.0.1:#{port}/0"

  @doc """
  A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA,
  made with the `openssl` command in a fresh directory: a map of their PEM files' paths.
  """
  def tls_certificates(name \\ "dspex test CA") do
    dir = fresh_dir()
    file = &Path.join(dir, &1)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    File.write!(file.("server.ext"), "subjectAltName=IP:127.0.0.1\n")
    File.write!(file.("client.ext"), "extendedKeyUsage=clientAuth\n")

    openssl!(
      ["req", "-x509"] ++
        ec ++
        ["-keyout", file.("ca.key"), "-out", file.("ca.crt"), "-days", "2", "-subj", "/CN=#{name}"]
    )

    for who <- ["server", "client"] do
      openssl!(
        ["req"] ++
          ec ++
          ["-keyout", file.("#{who}.key"), "-out", file.("#{who}.csr"), "-subj", "/CN=127.0.0.1"]
      )

      openssl!([
        "x509",
        "-req",
        "-in",
        file.("#{who}.csr"),
        "-CA",
        file.("ca.crt"),
        "-CAkey",
        file.("ca.key"),
        "-CAcreateserial",
        "-out",
        file.("#{who}.crt"),
        "-days",
        "2",
        "-extfile",
        file.("#{who}.ext")
      ])
    end

    %{
      dir: dir,
      ca: file.("ca.crt"),
      server_cert: file.("server.crt"),
      server_key: file.("server.key"),
      client_cert: file.("client.crt"),
      client_key: file.("client.key")
    }
  end

  defp openssl!(args) do
    exe = System.find_executable("openssl") || raise "openssl is not installed"

    case System.cmd(exe, args, stderr_to_stdout: true) do
      {_, 0} -> :ok
      {out, status} -> raise "openssl #{Enum.join(args, " ")} failed (#{status}):\n#{out}"
    end
  end

  @doc "kill -9 of the server, and its wait until the port is free."
  def kill(%__MODULE__{os_pid: os_pid, shell: shell} = server) do
    # It may be dead already: the shell kills it when the process that started it exits.
    System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true)
    # The shell reaps its killed child when its stdin closes and it exits.
    if Port.info(shell), do: Port.close(shell)
    await_down(server, System.monotonic_time(:millisecond) + @start_timeout)
  end

  @doc "Starts the server again on its port and data, after `kill/1`."
  def restart(%__MODULE__{} = server),
    do: start(dir: server.dir, port: server.port, password: server.password)

  @doc "Stops the server and removes its data."
  def stop(%__MODULE__{dir: dir} = server) do
    if os_alive?(server.os_pid), do: kill(server)
    File.rm_rf!(dir)
    :ok
  end

  defp read_pid(shell) do
    receive do
      {^shell, {:data, data}} -> data |> String.trim() |> String.to_integer()
    after
      @start_timeout -> raise "redis-server did not start"
    end
  end

  # Ready when it answers PING (with a password set, NOAUTH is an answer too).
  defp await_ready(server, deadline) do
    if answers?(server.port) do
      :ok
    else
      if System.monotonic_time(:millisecond) > deadline do
        log = File.read!(Path.join(server.dir, "server.log"))
        raise "redis-server on port #{server.port} did not become ready:\n#{log}"
      end

      Process.sleep(20)
      await_ready(server, deadline)
    end
  end

  defp await_down(server, deadline) do
    cond do
      not answers?(server.port) and not os_alive?(server.os_pid) -> :ok
      System.monotonic_time(:millisecond) > deadline -> raise "redis-server did not die"
      true -> retry_down(server, deadline)
    end
  end

  defp retry_down(server, deadline) do
    Process.sleep(20)
    await_down(server, deadline)
  end

  defp answers?(port) do
    case :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false], 500) do
      {:ok, socket} ->
        :ok = :gen_tcp.send(socket, "PING\r\n")
        reply = :gen_tcp.recv(socket, 0, 1_000)
        :gen_tcp.close(socket)
        match?({:ok, <<c, _::binary>>} when c in [?+, ?-], reply)

      {:error, _} ->
        false
    end
  end

  # A killed server may stay a zombie for a while; that is dead too.
  defp os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> stat |> String.split(") ") |> List.last() |> String.first() != "Z"
      {:error, _} -> false
    end
  end

  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, reuseaddr: true)
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  defp fresh_dir do
    dir = Path.join(System.tmp_dir!(), "dspex_redis_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    dir
  end
end
