defmodule DSPex.Bridge.PythonWorker.Listener do
  @moduledoc false
  # The node's gRPC server for remote workers (hosted in the NIF, see
  # native/dspex_nif/src/grpc_server.rs) and the gate in front of the pools: a new stream
  # belongs to this process until its hello is checked. A hello that names a pool accepting
  # remote workers, with that pool's token, gets a worker process under the pool's
  # supervisor, which takes the stream over; anything else is refused with a gRPC status,
  # logged, and reported as a `[:dspex, :bridge, :python, :worker_refused]` event.
  #
  # The server starts on first need (a pool with `accept_remote:`), on the address of
  # `config :dspex_bridge, :grpc, host: "127.0.0.1", port: 0`.
  use GenServer
  require Logger

  alias DSPex.Bridge.{Events, Native, PythonWorker}

  @protocol 1
  # A stream that sends no hello within this is closed (`:grpc, hello_timeout_ms:`).
  @hello_timeout_ms 5_000

  # gRPC status codes (as in grpc::StatusCode).
  @invalid_argument 3
  @deadline_exceeded 4
  @permission_denied 7
  @unauthenticated 16

  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # Starts the server unless it runs: {:ok, {host, port}} or {:error, reason}.
  def ensure_listening do
    GenServer.call(__MODULE__, :listen, 10_000)
  end

  @doc false
  def address do
    GenServer.call(__MODULE__, :address)
  catch
    :exit, _ -> nil
  end

  @impl true
  def init(nil), do: {:ok, %{server: nil, address: nil, pending: %{}}}

  @impl true
  def handle_call(:listen, _from, %{server: nil} = state) do
    opts = Application.get_env(:dspex_bridge, :grpc, [])
    host = Keyword.get(opts, :host, "127.0.0.1")
    port = Keyword.get(opts, :port, 0)

    with true <- is_binary(host) and is_integer(port) and port in 0..65_535,
         {:ok, server, bound} <-
           Native.grpc_listen(host, port, self(), PythonWorker.max_frame_bytes()) do
      Logger.info("dspex_bridge: accepting remote Python workers on #{host}:#{bound}")
      address = {host, bound}
      {:reply, {:ok, address}, %{state | server: server, address: address}}
    else
      false -> {:reply, {:error, {:invalid_grpc_config, opts}}, state}
      {:error, reason} -> {:reply, {:error, {:grpc_listen_failed, reason}}, state}
    end
  end

  def handle_call(:listen, _from, state), do: {:reply, {:ok, state.address}, state}
  def handle_call(:address, _from, state), do: {:reply, state.address, state}

  @impl true
  def handle_info({:dspex_grpc, conn, {:connected, peer}}, state) do
    timer = Process.send_after(self(), {:hello_timeout, conn}, hello_timeout_ms())
    {:noreply, put_in(state.pending[conn], {peer, timer})}
  end

  def handle_info({:dspex_grpc, conn, {:frame, bytes}}, state) do
    case Map.pop(state.pending, conn) do
      {nil, _} ->
        {:noreply, state}

      {{peer, timer}, pending} ->
        Process.cancel_timer(timer)
        admit(conn, peer, decode(bytes))
        {:noreply, %{state | pending: pending}}
    end
  end

  def handle_info({:dspex_grpc, conn, :closed}, state) do
    case Map.pop(state.pending, conn) do
      {{_peer, timer}, pending} ->
        Process.cancel_timer(timer)
        {:noreply, %{state | pending: pending}}

      {nil, _} ->
        {:noreply, state}
    end
  end

  def handle_info({:hello_timeout, conn}, state) do
    case Map.pop(state.pending, conn) do
      {{peer, _timer}, pending} ->
        refuse(conn, peer, nil, @deadline_exceeded, "no hello in time")
        {:noreply, %{state | pending: pending}}

      {nil, _} ->
        {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp hello_timeout_ms do
    case Keyword.get(Application.get_env(:dspex_bridge, :grpc, []), :hello_timeout_ms) do
      ms when is_integer(ms) and ms > 0 -> ms
      _ -> @hello_timeout_ms
    end
  end

  defp decode(bytes) do
    if byte_size(bytes) > PythonWorker.dirty_bytes(),
      do: {:error, :hello_too_large},
      else: Native.bridge_decode(bytes)
  end

  defp admit(conn, peer, {:ok, {:hello, %{protocol: @protocol} = hello}}) do
    case PythonWorker.remote_gate(hello.pool) do
      {:ok, pool, digest, sup} ->
        if token_matches?(hello.token, digest) do
          start_worker(conn, peer, pool, sup, hello)
        else
          refuse(conn, peer, pool, @unauthenticated, "wrong or missing token")
        end

      :error ->
        refuse(
          conn,
          peer,
          hello.pool,
          @permission_denied,
          "pool #{inspect(hello.pool)} does not accept remote workers"
        )
    end
  end

  defp admit(conn, peer, {:ok, {:hello, hello}}) do
    refuse(
      conn,
      peer,
      hello.pool,
      @invalid_argument,
      "protocol #{hello.protocol} (this bridge speaks #{@protocol})"
    )
  end

  defp admit(conn, peer, _other) do
    refuse(conn, peer, nil, @invalid_argument, "the first frame must be a hello")
  end

  # Compares digests, so the time taken says nothing about the token.
  defp token_matches?(token, digest),
    do: :crypto.hash_equals(:crypto.hash(:sha256, token), digest)

  defp start_worker(conn, peer, pool, sup, hello) do
    case PythonWorker.start_remote(sup, pool, conn, peer, hello) do
      {:ok, _pid} ->
        :ok

      {:error, reason} ->
        refuse(conn, peer, pool, @invalid_argument, "could not start: #{inspect(reason)}")
    end
  end

  defp refuse(conn, peer, pool, code, why) do
    Logger.warning("dspex_bridge: refused a remote Python worker from #{peer}: #{why}")
    Native.grpc_close(conn, code, why)

    if Events.enabled?() do
      Events.emit([:dspex, :bridge, :python, :worker_refused], %{}, %{
        pool: pool,
        peer: peer,
        reason: why
      })
    end
  end
end
