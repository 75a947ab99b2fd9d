defmodule DSPex.Bridge.RedisTlsTest do
  @moduledoc """
  `rediss://`: a real redis-server serving TLS with certificates made by `openssl`, which
  also asks every client for a certificate its CA signed.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{Redis, SessionStore, TestRedis, Variable}
  alias DSPex.Bridge.SessionStore.RedisBackend

  setup_all do
    certs = TestRedis.tls_certificates()
    server = TestRedis.start(password: "tls-pw", tls: certs)

    on_exit(fn ->
      TestRedis.stop(server)
      File.rm_rf!(certs.dir)
    end)

    %{server: server, certs: certs}
  end

  defp tls_opts(certs) do
    [
      password: "tls-pw",
      tls_ca_file: certs.ca,
      tls_cert_file: certs.client_cert,
      tls_key_file: certs.client_key
    ]
  end

  test "commands over TLS, the server verified against its CA", %{server: s, certs: certs} do
    assert {:ok, conn} = Redis.connect(TestRedis.tls_url(s), tls_opts(certs))
    assert {:ok, :ok} = Redis.command(conn, ["SET", "tls_key", "secret"])
    assert {:ok, "secret"} = Redis.command(conn, ["GET", "tls_key"])
  end

  test "the Redis backend runs over TLS", %{server: s, certs: certs} do
    start_supervised!({RedisBackend, [url: TestRedis.tls_url(s)] ++ tls_opts(certs)})
    id = "tls_#{System.unique_integer([:positive])}"
    assert {:ok, ^id} = SessionStore.create_session(id, backend: :redis)
    {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)
    # Watches ride the subscriber connection, over TLS too.
    {:ok, _} = SessionStore.watch(id, :x)
    assert {:ok, %Variable{value: 2, version: 2}} = SessionStore.update_variable(id, :x, 2)
    assert_receive {:dspex_variable_changed, ^id, :x, %{new: 2, version: 2}}, 5_000
    assert {:ok, %Variable{value: 2}} = SessionStore.get_variable(id, :x)
    :ok = SessionStore.delete_session(id)
  end

  test "a server whose certificate another CA signed is refused at connect", %{server: s} do
    other = TestRedis.tls_certificates("another CA")
    on_exit(fn -> File.rm_rf!(other.dir) end)

    opts = [
      password: "tls-pw",
      tls_ca_file: other.ca,
      tls_cert_file: other.client_cert,
      tls_key_file: other.client_key
    ]

    assert {:error, {kind, text}} = Redis.connect(TestRedis.tls_url(s), opts)
    assert kind in [:unavailable, :client]
    assert text =~ ~r/certificate|UnknownIssuer/i
  end

  test "a client without a certificate is refused when the server asks for one", %{
    server: s,
    certs: certs
  } do
    assert {:error, {:unavailable, _}} =
             Redis.connect(TestRedis.tls_url(s), password: "tls-pw", tls_ca_file: certs.ca)
  end

  test "bad TLS options are clear errors", %{server: s, certs: certs} do
    url = TestRedis.tls_url(s)

    assert {:error, {:invalid_option, {:tls, _}}} =
             Redis.connect(url, tls_ca_file: certs.ca, tls_cert_file: certs.client_cert)

    assert {:error, {:tls_file, "/nonexistent/ca.pem", :enoent}} =
             Redis.connect(url, tls_ca_file: "/nonexistent/ca.pem")

    assert {:error, {:invalid_tls, _}} = Redis.connect(TestRedis.url(s), tls_ca_file: certs.ca)

    garbage = Path.join(certs.dir, "garbage.pem")
    File.write!(garbage, "not a certificate")
    assert {:error, {:invalid_tls, _}} = Redis.connect(url, tls_ca_file: garbage)

    assert {:error, {:invalid_option, {:tls_ca_file, 42}}} = Redis.connect(url, tls_ca_file: 42)
  end
end
