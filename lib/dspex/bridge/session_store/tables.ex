defmodule DSPex.Bridge.SessionStore.Tables do
  @moduledoc false
  # Owns the SessionStore's ETS tables so they outlive any one session process.
  #
  # sessions:  {session_id, meta, pid, touch}            set
  # variables: {{session_id, name}, %Variable{}, touch}  ordered_set: a session's variables
  #            are one contiguous key range, so listing or deleting them never scans others
  # history:   {{session_id, name}, [entry]}             ordered_set, newest entry first
  # (Access policies are not here: the NIF's engine stores them once, compiled and as given.)
  # audit:     {unique_int, entry}                       ordered_set, bounded access log
  # watchers:  {session_id, name, pid}                   duplicate_bag; a session's watchers,
  #            kept here so that a session restarted after a crash still notifies them
  # keep:      {session_id, ha}                          set; the HA registration a restarted
  #            session resumes
  #
  # `touch` is an :atomics ref per session; readers set it so the session's idle timer knows
  # the session was used without reads ever writing to ETS or messaging a process.
  use GenServer

  @sessions :dspex_bridge_sessions
  @variables :dspex_bridge_variables
  @history :dspex_bridge_history
  @audit :dspex_bridge_audit
  @watchers :dspex_bridge_watchers
  @keep :dspex_bridge_session_keep

  def sessions, do: @sessions
  def variables, do: @variables
  def history, do: @history
  def watchers, do: @watchers
  def keep, do: @keep

  def start_link(_), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @impl true
  def init(:ok) do
    opts = [:public, :named_table, read_concurrency: true, write_concurrency: true]
    :ets.new(@sessions, [:set | opts])
    :ets.new(@variables, [:ordered_set | opts])
    :ets.new(@history, [:ordered_set | opts])
    :ets.new(@audit, [:ordered_set, :public, :named_table, write_concurrency: true])
    :ets.new(@watchers, [:duplicate_bag | opts])
    :ets.new(@keep, [:set | opts])
    {:ok, nil}
  end
end
