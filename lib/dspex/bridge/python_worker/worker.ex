defmodule DSPex.Bridge.PythonWorker.Worker do
  @moduledoc false
  # One worker: a local Python process behind a Port on fds 3/4, or a remote one on a gRPC
  # stream (a connection resource of the NIF's server). The process owns the carrier and
  # a table of the calls in flight; it matches results to callers by id, tells Python to
  # cancel a call past its deadline, answers the ctx requests of the calls in flight (in
  # tasks of their own, on behalf of the call's session), and sends a local interpreter's
  # stdout and stderr to Logger. Both carriers move the same frames; only `send_frame/2`
  # and the messages that bring frames in differ.
  #
  # A call is made in the caller's process (`call/5`): it enters the table, writes its
  # frame to the carrier itself and waits for its result, which the worker sends straight
  # back. That is one process hop less than a GenServer call on every round trip.
  use GenServer, restart: :permanent
  require Logger

  alias DSPex.Bridge.{Events, Native, PythonWorker}
  alias DSPex.Bridge.Python.{SessionOps, Watch}

  @protocol 1
  # gRPC status UNAVAILABLE: what a remote worker is told when its worker process ends.
  @unavailable 14

  def start_link(config), do: GenServer.start_link(__MODULE__, config)

  @doc false
  # `member`: the worker's registry entry with its pid (see `register/2`).
  def call(%{pid: pid, table: table, carrier: carrier} = member, id, session, frame, timeout) do
    started = System.monotonic_time()
    deadline = System.monotonic_time(:millisecond) + timeout
    # Raises (below) when the worker and its table are gone; monitored only once entered,
    # so no monitor is left behind.
    :ets.insert(table, {id, self(), session, started, deadline})
    mref = Process.monitor(pid)

    if Events.enabled?(),
      do: emit_call(:call_start, %{}, member, %{id: id, session_id: session})

    if send_frame(carrier, frame) == :ok do
      await(member, id, mref, timeout)
    else
      :ets.delete(table, id)
      Process.demonitor(mref, [:flush])
      {:error, :worker_unavailable}
    end
  rescue
    # The worker's table went with it.
    ArgumentError -> {:error, :worker_unavailable}
  end

  defp await(member, id, mref, timeout) do
    receive do
      {:dspex_python_result, ^id, result} ->
        Process.demonitor(mref, [:flush])
        result

      {:DOWN, ^mref, _, _, _} ->
        {:error, :worker_unavailable}
    after
      timeout ->
        if take(member.table, id) != [] do
          send(member.pid, {:deadline, id})
          Process.demonitor(mref, [:flush])
          {:error, :timeout}
        else
          # The worker took the call a moment ago: its result is on the way.
          await(member, id, mref, :infinity)
        end
    end
  end

  # A table that is gone (its worker died) holds nothing: the :DOWN is on its way.
  defp take(table, id) do
    :ets.take(table, id)
  rescue
    ArgumentError -> []
  end

  defp send_frame({:port, port}, frame) do
    Port.command(port, frame)
    :ok
  rescue
    ArgumentError -> :error
  end

  defp send_frame({:grpc, conn}, frame), do: Native.grpc_send(conn, frame)

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
        register(state, {:grpc, conn})
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
    state = %{new_state(config) | port: port, os_pid: os_pid}
    register(state, {:port, port})
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
      # {call id, caller, session, started, deadline_ms}: the calls in flight
      pending: :ets.new(__MODULE__, [:set, :public, write_concurrency: true]),
      stuck: MapSet.new(),
      # watch id => {call id, watcher pid}: the ctx.watch streams of the calls in flight
      watches: %{},
      ping: nil
    }
  end

  # A member of the pool: what a caller needs to make a call on this worker.
  defp register(state, carrier) do
    member = %{
      slot: state.config.index,
      carrier: carrier,
      table: state.pending,
      pool: state.config.pool,
      counter: state.config.counter,
      os_pid: state.os_pid,
      peer: state.peer
    }

    {:ok, _} = Registry.register(PythonWorker.members(), state.config.pool, member)
  end

  # Frames the worker itself sends (cancels, pings, ctx replies).
  defp transmit(%{conn: nil, port: port}, bytes), do: send_frame({:port, port}, bytes)
  defp transmit(%{conn: conn}, bytes), do: send_frame({:grpc, conn}, bytes)

  @impl true
  def handle_call(:info, _from, state) do
    info = %{
      os_pid: state.os_pid,
      remote: state.conn != nil,
      peer: state.peer,
      in_flight: :ets.info(state.pending, :size),
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
    {:stop, {:shutdown, :disconnected}, state}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) when port != nil do
    fail_all(state, {:error, {:worker_exited, status}})
    emit(:worker_left, %{}, state, %{status: status})
    {:stop, {:shutdown, {:python_exited, status}}, %{state | port: nil, os_pid: nil}}
  end

  # A caller's deadline passed (it has taken the call out of the table and answered itself).
  def handle_info({:deadline, id}, state) do
    {:ok, cancel} = Native.bridge_encode({:cancel, id})
    transmit(state, cancel)
    stuck = MapSet.put(state.stuck, id)
    state = end_watches(%{state | stuck: stuck}, id)

    # Every slot held by a call that never ended: the interpreter is no use any more.
    if MapSet.size(stuck) >= state.config.concurrency do
      fail_all(state, {:error, :worker_restarted})
      {:stop, {:shutdown, :stuck}, state}
    else
      {:noreply, state}
    end
  end

  def handle_info(:health, %{ping: nonce} = state) when nonce != nil do
    # The last ping was never answered.
    fail_all(state, {:error, :worker_restarted})
    {:stop, {:shutdown, :unresponsive}, state}
  end

  def handle_info(:health, state) do
    schedule_health(state.config)
    state = expire_orphans(state)
    nonce = System.unique_integer([:positive])
    {:ok, ping} = Native.bridge_encode({:ping, nonce})
    transmit(state, ping)
    {:noreply, %{state | ping: nonce}}
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state) when port != nil do
    fail_all(state, {:error, {:worker_exited, :port_closed}})
    {:stop, {:shutdown, :port_closed}, %{state | port: nil}}
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
    case :ets.take(state.pending, id) do
      [] ->
        # A call already answered (its deadline passed): its slot is free again.
        %{state | stuck: MapSet.delete(state.stuck, id)}

      [{^id, caller, session, started, _deadline}] ->
        result = result_of(outcome, byte_size(bytes), state.config.max_response_bytes)
        send(caller, {:dspex_python_result, id, result})

        if Events.enabled?() do
          us = System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)
          meta = %{id: id, session_id: session, ok: match?({:ok, _}, result)}
          emit(:call_stop, %{duration_us: us}, state, meta)

          with {:error, {:python, type, message}} <- result,
               do: emit(:call_exception, %{}, state, %{id: id, type: type, message: message})
        end

        end_watches(state, id)
    end
  end

  defp handle_frame({:session_request, rid, call_id, "watch", args}, _bytes, state) do
    carrier = Map.take(state, [:conn, :port])

    case :ets.lookup(state.pending, call_id) do
      [{_, _caller, session, _started, _deadline}] when session != nil ->
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

    case :ets.lookup(state.pending, call_id) do
      [{_, _caller, session, _started, _deadline}] ->
        # Answered in a task: a slow SessionStore call never holds this worker's other calls.
        Task.start(fn -> reply(carrier, rid, SessionOps.run(session, op, args, worker)) end)

      [] ->
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
    for {id, caller, _session, _started, _deadline} <- :ets.tab2list(state.pending),
        :ets.take(state.pending, id) != [],
        do: send(caller, {:dspex_python_result, id, result})

    :ok
  end

  # Calls whose caller went away before their deadline could be kept (a killed process):
  # past the deadline, they are cancelled as the caller would have done.
  defp expire_orphans(state) do
    now = System.monotonic_time(:millisecond)

    expired =
      :ets.select(state.pending, [{{:"$1", :_, :_, :_, :"$2"}, [{:<, :"$2", now - 1_000}], [:"$1"]}])

    Enum.reduce(expired, state, fn id, state ->
      if :ets.take(state.pending, id) != [] do
        {:ok, cancel} = Native.bridge_encode({:cancel, id})
        transmit(state, cancel)
        end_watches(%{state | stuck: MapSet.put(state.stuck, id)}, id)
      else
        state
      end
    end)
  end

  defp emit(event, measurements, state, meta) do
    if Events.enabled?() do
      meta = Map.merge(meta, %{pool: state.config.pool, os_pid: state.os_pid, peer: state.peer})
      Events.emit([:dspex, :bridge, :python, event], measurements, meta)
    end
  end

  defp emit_call(event, measurements, member, meta) do
    meta = Map.merge(meta, %{pool: member.pool, os_pid: member.os_pid, peer: member.peer})
    Events.emit([:dspex, :bridge, :python, event], measurements, meta)
  end

  defp schedule_health(config), do: Process.send_after(self(), :health, config.health_interval_ms)
end
