defmodule DSPex.Bridge.PythonWorker.Worker do
  @moduledoc false
  # One Python process behind a Port. The process owns the Port (a Port needs an owner),
  # matches replies to callers by request id, and enforces each request's deadline. When a
  # deadline passes, the interpreter is presumed stuck: the process stops and its
  # supervisor starts a fresh interpreter.
  use GenServer, restart: :permanent

  alias DSPex.Bridge.Native

  @json_dirty_bytes 64 * 1024

  @doc """
  A request's tool and arguments as JSON, encoded in the caller's process so that a worker
  only ever sees well-formed requests: `{:ok, {tool_json, args_json}}` or the encoder's
  `{:error, {:not_serializable, detail}}`.
  """
  def encode_request(tool, args) do
    with {:ok, tool_json} <- json_encode(tool),
         {:ok, args_json} <- json_encode(args) do
      {:ok, {tool_json, args_json}}
    end
  end

  def start_link(config) do
    GenServer.start_link(__MODULE__, config,
      name: {:via, Registry, {DSPex.Bridge.PythonWorker.registry(), {config.pool, config.index}}}
    )
  end

  def call(pid, {_tool_json, _args_json} = request, timeout) do
    # The worker answers at the deadline itself; the margin only covers a dead worker.
    GenServer.call(pid, {:call, request, timeout}, timeout + 1_000)
  catch
    :exit, _ -> {:error, :worker_unavailable}
  end

  def os_pid(pid) do
    GenServer.call(pid, :os_pid, 1_000)
  catch
    :exit, _ -> nil
  end

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)

    port =
      Port.open({:spawn_executable, config.python}, [
        :binary,
        :exit_status,
        {:packet, 4},
        args: ["-u", config.script]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    schedule_health(config)

    {:ok,
     %{config: config, port: port, os_pid: os_pid, next_id: 1, pending: %{}, order: :queue.new()}}
  end

  @impl true
  def handle_call({:call, request, timeout}, from, state) do
    {:noreply, send_request(state, request, timeout, from)}
  end

  def handle_call(:os_pid, _from, state), do: {:reply, state.os_pid, state}

  @impl true
  def handle_info({port, {:data, frame}}, %{port: port} = state) do
    {:noreply, handle_frame(state, frame)}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    fail_all(state, {:error, {:worker_exited, status}})
    {:stop, {:shutdown, {:python_exited, status}}, %{state | pending: %{}, port: nil, os_pid: nil}}
  end

  def handle_info({:deadline, id}, state) do
    case Map.pop(state.pending, id) do
      {nil, _} ->
        {:noreply, state}

      {{from, _timer}, pending} ->
        reply(from, {:error, :timeout})
        state = %{state | pending: pending}
        fail_all(state, {:error, :worker_restarted})
        {:stop, {:shutdown, :request_timeout}, %{state | pending: %{}}}
    end
  end

  def handle_info(:health, state) do
    schedule_health(state.config)

    if map_size(state.pending) == 0 do
      ping = {~s("ping"), "{}"}
      {:noreply, send_request(state, ping, state.config.health_interval_ms, :health)}
    else
      {:noreply, state}
    end
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state) do
    fail_all(state, {:error, {:worker_exited, :port_closed}})
    {:stop, {:shutdown, :port_closed}, %{state | pending: %{}, port: nil}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # A stuck interpreter ignores a closed stdin: kill it so it cannot linger.
    if state.os_pid,
      do: System.cmd("kill", ["-9", Integer.to_string(state.os_pid)], stderr_to_stdout: true)

    :ok
  end

  # The frame is put together from JSON the caller already encoded: nothing here can fail
  # on what a caller sent.
  defp send_request(state, {tool_json, args_json}, timeout, from) do
    id = state.next_id

    frame = [
      ~s({"id":),
      Integer.to_string(id),
      ~s(,"tool":),
      tool_json,
      ~s(,"args":),
      args_json,
      "}"
    ]

    Port.command(state.port, frame)
    timer = Process.send_after(self(), {:deadline, id}, timeout)

    %{
      state
      | next_id: id + 1,
        pending: Map.put(state.pending, id, {from, timer}),
        order: :queue.in(id, state.order)
    }
  end

  defp handle_frame(state, frame) when byte_size(frame) > state.config.max_response_bytes do
    answer_oldest(state, {:error, :oversized_response})
  end

  defp handle_frame(state, frame) do
    case json_decode(frame) do
      {:ok, %{"id" => id} = response} when is_map_key(state.pending, id) ->
        answer(state, id, result_of(response))

      # An error Python could not tie to a request (a frame it could not read): Python
      # answers in order, so it is the oldest request's.
      {:ok, %{"id" => nil, "error" => _} = response} ->
        answer_oldest(state, result_of(response))

      {:ok, _stale_or_unknown} ->
        state

      # Python answers in order, so an unreadable reply belongs to the oldest request.
      {:error, {:invalid_json, detail}} ->
        answer_oldest(state, {:error, {:invalid_response, detail}})
    end
  end

  defp result_of(%{"ok" => value}), do: {:ok, value}

  defp result_of(%{"error" => %{"type" => type, "message" => message}}),
    do: {:error, {:python, type, message}}

  defp result_of(other), do: {:error, {:invalid_response, other}}

  defp answer_oldest(state, result) do
    case first_pending(state.order, state.pending) do
      {nil, order} -> %{state | order: order}
      {id, order} -> answer(%{state | order: order}, id, result)
    end
  end

  defp first_pending(order, pending) do
    case :queue.out(order) do
      {{:value, id}, rest} ->
        if Map.has_key?(pending, id), do: {id, order}, else: first_pending(rest, pending)

      {:empty, rest} ->
        {nil, rest}
    end
  end

  defp answer(state, id, result) do
    {{from, timer}, pending} = Map.pop(state.pending, id)
    Process.cancel_timer(timer)
    reply(from, result)
    %{state | pending: pending, order: :queue.filter(&(&1 != id), state.order)}
  end

  defp reply(:health, _result), do: :ok
  defp reply(from, result), do: GenServer.reply(from, result)

  defp fail_all(state, result) do
    for {_id, {from, timer}} <- state.pending do
      Process.cancel_timer(timer)
      reply(from, result)
    end
  end

  defp schedule_health(config), do: Process.send_after(self(), :health, config.health_interval_ms)

  defp json_encode(term) do
    if :erlang.external_size(term) > @json_dirty_bytes,
      do: Native.json_encode_dirty(term),
      else: Native.json_encode(term)
  end

  defp json_decode(bin) do
    if byte_size(bin) > @json_dirty_bytes,
      do: Native.json_decode_dirty(bin),
      else: Native.json_decode(bin)
  end
end
