defmodule DSPex.Bridge.SessionStore.Supervisor do
  @moduledoc false
  # The tables' owner comes first; if it ever dies, every session process restarts with it
  # (rest_for_one), since their rows went with the tables. Session processes are temporary
  # children: a crashed one is restarted (or removed) by the Keeper, one session at a time,
  # so no number of crashes in any sessions can take the supervisor, and the others, down.
  use Supervisor

  def start_link(_), do: Supervisor.start_link(__MODULE__, :ok, name: __MODULE__)

  @impl true
  def init(:ok) do
    children = [
      DSPex.Bridge.SessionStore.Tables,
      {DynamicSupervisor, name: DSPex.Bridge.SessionStore.Sessions, strategy: :one_for_one},
      DSPex.Bridge.SessionStore.Keeper
    ]

    Supervisor.init(children, strategy: :rest_for_one)
  end
end
