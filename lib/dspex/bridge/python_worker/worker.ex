defmodule DSPex.Bridge.PythonWorker.Worker do
  @moduledoc false
  # One worker: a local Python process behind a Port on fds 3/4, or a remote one on a gRPC
  # stream (a connection resource of the NIF's server). The process owns the carrier,
  # matches results to callers by id, enforces each call's deadline (and tells Python to
  # cancel), answers the ctx requests of the calls in flight (in tasks of their own, on
  # behalf of the call's session), and sends a local interpreter's stdout and stderr to
  # Logger. Both carriers move the same frames; only `transmit/2` and the messages that
  # bring frames in differ.
  use GenServer, restart: :permanent
  require Logger

  alias DSPex.Bridge.{Events, Native, PythonWorker}
  alias DSPex.Bridge.Python.{SessionOps, Watch}

  @protocol 1
  # gRPC status UNAVAILABLE: what a remote worker is told when its worker process ends.
  @unavailable 14

  def start_link(config), do: GenServer.start_link(__MODULE__, config)

  def call(pid, id, session, frame, timeout) do
    # The worker answers at the deadline itself; the margin only covers a dead worker.
    GenServer.call(pid, {:call, id, session, frame, timeout}, timeout + 1_000)
  catch
    :exit, _ -> {:error, :worker_unavailable}
  end

  def info(pid) do
    GenServer.call(pid, :info, 1_000)
  catch
    :exit, _ -> nil
  end

  @impl true
  def init(%{transport: {:remote, conn, peer}} = config) do
    Process.flag(:trap_exit, true)

    case Native.grpc_set_owner(conn, self()) do
      :ok ->
        state = %{new_state(config) | conn: conn, peer: peer, tools: config.tools}
        {:ok, welcome} = Native.bridge_encode({:welcome, @protocol})
        transmit(state, welcome)
        {:ok, _} = Registry.register(PythonWorker.members(), config.pool, config.index)
        schedule_health(config)
        emit(:worker_joined, %{}, state, %{tools: config.tools, remote: true})
        {:ok, state}

      {:error, :closed} ->
        :ignore
    end
  end

  def init(config) do
    Process.flag(:trap_exit, true)
    sdk = Path.join(:code.priv_dir(:dspex_bridge), "python")
    path = Enum.join([sdk | config.python_path] ++ List.wrap(System.get_env("PYTHONPATH")), ":")
    modules = Enum.flat_map(config.modules, &["--module", &1])

    args =
      ["-u", "-m", "dspex_bridge.worker", "--concurrency", Integer.to_string(config.concurrency)] ++
        ["--pool", to_string(config.pool) | modules]

    env = for {k, v} <- [{"PYTHONPATH", path} | config.env], do: {~c"#{k}", ~c"#{v}"}

    port =
      Port.open({:spawn_executable, config.python}, [
        :binary,
        :exit_status,
        :nouse_stdio,
        {:packet, 4},
        args: args,
        env: env
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    schedule_health(config)
    {:ok, _} = Registry.register(PythonWorker.members(), config.pool, config.index)
    state = %{new_state(config) | port: port, os_pid: os_pid}
    starts = :atomics.add_get(config.counter, 1 + config.index, 1)
    if starts > 1, do: emit(:worker_restarted, %{restarts: starts - 1}, state, %{})
    {:ok, state}
  end

  defp new_state(config) do
    %{
      config: config,
      port: nil,
      os_pid: nil,
      conn: nil,
      peer: nil,
      tools: nil,
      pending: %{},
      stuck: MapSet.new(),
      # watch id => {call id, watcher pid}: the ctx.watch streams of the calls in flight
      watches: %{},
      ping: nil
    }
  end

  # The one place a frame leaves for Python.
  defp transmit(%{conn: nil, port: port}, bytes), do: Port.command(port, bytes)
  defp transmit(%{conn: conn}, bytes), do: Native.grpc_send(conn, bytes)

  @impl true
  def handle_call({:call, id, session, frame, timeout}, from, state) do
    transmit(state, frame)
    timer = Process.send_after(self(), {:deadline, id}, timeout)
    emit(:call_start, %{}, state, %{id: id, session_id: session})

    {:noreply,
     %{state | pending: Map.put(state.pending, id, {from, timer, session, System.monotonic_time()})}}
  end

  def handle_call(:info, _from, state) do
    info = %{
      os_pid: state.os_pid,
      remote: state.conn != nil,
      peer: state.peer,
      in_flight: map_size(state.pending),
      tools: state.tools || []
    }

    {:reply, info, state}
  end

  @impl true
  def handle_info({port, {:data, bytes}}, %{port: port} = state) when port != nil,
    do: incoming(bytes, state)

  def handle_info({:dspex_grpc, conn, {:frame, bytes}}, %{conn: conn} = state),
    do: incoming(bytes, state)

  def handle_info({:dspex_grpc, conn, :closed}, %{conn: conn} = state) do
    fail_all(state, {:error, {:worker_exited, :disconnected}})
    emit(:worker_left, %{}, state, %{status: :disconnected})
    {:stop, {:shutdown, :disconnected}, %{state | pending: %{}}}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) when port != nil do
    fail_all(state, {:error, {:worker_exited, status}})
    emit(:worker_left, %{}, state, %{status: status})
    {:stop, {:shutdown, {:python_exited, status}}, %{state | pending: %{}, port: nil, os_pid: nil}}
  end

  def handle_info({:deadline, id}, state) do
    case Map.pop(state.pending, id) do
      {nil, _} ->
        {:noreply, state}

      {{from, _timer, _session, _started}, pending} ->
        GenServer.reply(from, {:error, :timeout})
        {:ok, cancel} = Native.bridge_encode({:cancel, id})
        transmit(state, cancel)
        stuck = MapSet.put(state.stuck, id)
        state = end_watches(%{state | pending: pending, stuck: stuck}, id)

        # Every slot held by a call that never ended: the interpreter is no use any more.
        if MapSet.size(stuck) >= state.config.concurrency do
          fail_all(state, {:error, :worker_restarted})
          {:stop, {:shutdown, :stuck}, %{state | pending: %{}}}
        else
          {:noreply, state}
        end
    end
  end

  def handle_info(:health, %{ping: nonce} = state) when nonce != nil do
    # The last ping was never answered.
    fail_all(state, {:error, :worker_restarted})
    {:stop, {:shutdown, :unresponsive}, %{state | pending: %{}}}
  end

  def handle_info(:health, state) do
    schedule_health(state.config)
    nonce = System.unique_integer([:positive])
    {:ok, ping} = Native.bridge_encode({:ping, nonce})
    transmit(state, ping)
    {:noreply, %{state | ping: nonce}}
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state) when port != nil do
    fail_all(state, {:error, {:worker_exited, :port_closed}})
    {:stop, {:shutdown, :port_closed}, %{state | pending: %{}, port: nil}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(reason, %{conn: conn}) when conn != nil do
    Native.grpc_close(conn, @unavailable, "the worker's process ended: #{inspect(reason)}")
    :ok
  end

  def terminate(_reason, state) do
    # A stuck interpreter ignores a closed pipe: kill it so it cannot linger.
    if state.os_pid,
      do: System.cmd("kill", ["-9", Integer.to_string(state.os_pid)], stderr_to_stdout: true)

    :ok
  end

  defp incoming(bytes, state) do
    decoded =
      if byte_size(bytes) > PythonWorker.dirty_bytes(),
        do: Native.bridge_decode_dirty(bytes),
        else: Native.bridge_decode(bytes)

    case decoded do
      {:ok, frame} ->
        {:noreply, handle_frame(frame, bytes, state)}

      {:error, {:invalid_frame, detail}} ->
        Logger.error("dspex_bridge: worker #{who(state)} sent an unreadable frame: #{detail}")
        {:noreply, state}
    end
  end

  defp who(%{peer: nil, os_pid: os_pid}), do: "pid #{os_pid}"
  defp who(%{peer: peer}), do: "at #{peer}"

  defp handle_frame({:result, id, outcome}, bytes, state) do
    case Map.pop(state.pending, id) do
      {nil, _} ->
        # A call already answered (its deadline passed): its slot is free again.
        %{state | stuck: MapSet.delete(state.stuck, id)}

      {{from, timer, session, started}, pending} ->
        Process.cancel_timer(timer)
        result = result_of(outcome, byte_size(bytes), state.config.max_response_bytes)
        GenServer.reply(from, result)
        us = System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)

        emit(:call_stop, %{duration_us: us}, state, %{
          id: id,
          session_id: session,
          ok: match?({:ok, _}, result)
        })

        end_watches(%{state | pending: pending}, id)
    end
  end

  defp handle_frame({:session_request, rid, call_id, "watch", args}, _bytes, state) do
    carrier = Map.take(state, [:conn, :port])

    case Map.fetch(state.pending, call_id) do
      {:ok, {_from, _timer, session, _started}} when session != nil ->
        answer = &reply(carrier, rid, &1)
        pid = Watch.start_link(session, rid, args["names"], answer, &transmit(carrier, &1))
        %{state | watches: Map.put(state.watches, rid, {call_id, pid})}

      _ ->
        reply(carrier, rid, {:error, "cancelled", "the call is no longer in flight"})
        state
    end
  end

  defp handle_frame({:session_request, rid, _call_id, "unwatch", args}, _bytes, state) do
    {watch, watches} = Map.pop(state.watches, args["id"])
    if watch, do: send(elem(watch, 1), :stop)
    reply(Map.take(state, [:conn, :port]), rid, {:ok, nil})
    %{state | watches: watches}
  end

  defp handle_frame({:session_request, rid, call_id, op, args}, _bytes, state) do
    carrier = Map.take(state, [:conn, :port])
    worker = self()

    case Map.fetch(state.pending, call_id) do
      {:ok, {_from, _timer, session, _started}} ->
        # Answered in a task: a slow SessionStore call never holds this worker's other calls.
        Task.start(fn -> reply(carrier, rid, SessionOps.run(session, op, args, worker)) end)

      :error ->
        reply(carrier, rid, {:error, "cancelled", "the call is no longer in flight"})
    end

    state
  end

  defp handle_frame({:hello, info}, _bytes, state) do
    emit(:worker_joined, %{}, state, %{tools: info.tools, remote: false})
    %{state | tools: info.tools}
  end

  defp handle_frame({:pong, nonce}, _bytes, %{ping: nonce} = state), do: %{state | ping: nil}
  defp handle_frame({:pong, _}, _bytes, state), do: state

  defp handle_frame({:ping, nonce}, _bytes, state) do
    {:ok, pong} = Native.bridge_encode({:pong, nonce})
    transmit(state, pong)
    state
  end

  defp handle_frame({:log, stream, line}, _bytes, state) do
    meta = [python_pool: state.config.pool, python_os_pid: state.os_pid, stream: stream]

    if stream == :stderr,
      do: Logger.warning(line, meta),
      else: Logger.info(line, meta)

    emit(:log, %{}, state, %{stream: stream, line: line})
    state
  end

  # A call's watches end with it.
  defp end_watches(%{watches: watches} = state, _call_id) when watches == %{}, do: state

  defp end_watches(state, call_id) do
    {ended, kept} = Enum.split_with(state.watches, fn {_id, {call, _pid}} -> call == call_id end)
    for {_id, {_call, pid}} <- ended, do: send(pid, :stop)
    %{state | watches: Map.new(kept)}
  end

  defp result_of(_outcome, size, max) when size > max, do: {:error, :oversized_response}
  defp result_of({:ok, value}, _size, _max), do: {:ok, value}
  defp result_of({:error, type, message}, _size, _max), do: {:error, {:python, type, message}}

  defp reply(carrier, rid, outcome) do
    frame =
      case Native.bridge_encode({:session_reply, rid, outcome}) do
        {:ok, bytes} ->
          bytes

        {:error, {:not_serializable, detail}} ->
          {:ok, bytes} =
            Native.bridge_encode({:session_reply, rid, {:error, "not_serializable", detail}})

          bytes
      end

    transmit(carrier, frame)
  catch
    # The worker (and its port) went away while the request was answered.
    :error, :badarg -> :ok
  end

  defp fail_all(state, result) do
    for {_id, {from, timer, _session, _started}} <- state.pending do
      Process.cancel_timer(timer)
      GenServer.reply(from, result)
    end
  end

  defp emit(event, measurements, state, meta) do
    if Events.enabled?() do
      meta = Map.merge(meta, %{pool: state.config.pool, os_pid: state.os_pid, peer: state.peer})
      Events.emit([:dspex, :bridge, :python, event], measurements, meta)
    end
  end

  defp schedule_health(config), do: Process.send_after(self(), :health, config.health_interval_ms)
end
