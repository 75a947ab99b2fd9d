defmodule DSPex.Bridge.SessionStore.Keeper do
  @moduledoc false
  # Watches every session process, so that the end of one is never the end of others and a
  # session is never left half-there (rows in ETS, no process to write them).
  #
  # When a session process ends, its row in the sessions table tells what happened: a
  # session that ended on purpose (deleted, expired, migrated away) removed its row first.
  # A row that still names the dead process means it crashed. The session is then started
  # again over its rows, which the tables' owner kept: variables, history, graph and
  # policies as its last committed write left them, its watchers monitored again and its HA
  # registration resumed. A session that crashes @max_crashes times within @window_ms is
  # removed whole instead: its rows and policies go, and each watcher is told
  # `{:dspex_watch_lost, session_id, name, :session_crashed}`.
  use GenServer
  require Logger

  alias DSPex.Bridge.Events
  alias DSPex.Bridge.HAManager.Replication
  alias DSPex.Bridge.SessionStore.{Session, Tables}

  @max_crashes 3
  @window_ms 5_000

  def start_link(_), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc "Watch the session process `pid` of `id` (sent by the session itself, from init)."
  def watch(id, pid), do: GenServer.cast(__MODULE__, {:watch, id, pid})

  @impl true
  def init(:ok) do
    # After a restart of the keeper itself: watch every session that has a live process,
    # and treat one whose process is already gone as crashed.
    for {id, _meta, pid, _touch} <- :ets.tab2list(Tables.sessions()),
        do: GenServer.cast(self(), {:watch, id, pid})

    {:ok, %{crashes: %{}}}
  end

  @impl true
  def handle_cast({:watch, id, pid}, state) do
    Process.monitor(pid)
    {:noreply, put_in(state, [:crashes, pid], id)}
  end

  @impl true
  def handle_info({:DOWN, _ref, :process, pid, reason}, state) do
    {id, crashes} = Map.pop(state.crashes, pid)

    case id != nil and :ets.lookup(Tables.sessions(), id) do
      [{^id, meta, ^pid, _touch}] ->
        {:noreply, crashed(id, meta, reason, %{state | crashes: crashes})}

      _ ->
        {:noreply, %{state | crashes: crashes}}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp crashed(id, meta, reason, state) do
    now = System.monotonic_time(:millisecond)
    recent = for t <- Map.get(state, {:history, id}, []), now - t < @window_ms, do: t

    if length(recent) < @max_crashes do
      Logger.error(
        "dspex_bridge: session #{inspect(id)} crashed (#{inspect(reason)}); restarting it"
      )

      state = Map.put(state, {:history, id}, [now | recent])

      case DynamicSupervisor.start_child(
             DSPex.Bridge.SessionStore.Sessions,
             {Session, {id, meta, :restart}}
           ) do
        {:ok, _pid} -> state
        other -> remove(id, {:restart_failed, other}, state)
      end
    else
      remove(id, :crashed_repeatedly, state)
    end
  end

  defp remove(id, why, state) do
    Logger.error("dspex_bridge: session #{inspect(id)} removed (#{inspect(why)})")
    watchers = :ets.lookup(Tables.watchers(), id)
    ha = :ets.lookup(Tables.keep(), id)
    Session.destroy_rows(id)
    for {_, ha} <- ha, do: Replication.retire(id, Map.put(ha, :ops, 0))
    for {_, name, pid} <- watchers, do: send(pid, {:dspex_watch_lost, id, name, :session_crashed})
    Events.emit([:dspex, :bridge, :session, :crashed], %{}, %{session_id: id, reason: why})
    Map.delete(state, {:history, id})
  end
end
