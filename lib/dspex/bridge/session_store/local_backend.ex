defmodule DSPex.Bridge.SessionStore.LocalBackend do
  @moduledoc """
  Sessions in this node's memory: the `:local` backend of `DSPex.Bridge.SessionStore`, and
  its default.

  A session is one process under `SessionStore`'s supervisor, holding the NIF's session
  core (versions, the dependency graph, the write log); its variables and history are
  ETS rows that readers read without calling it. `DSPex.Bridge.HAManager` replicates it
  to other nodes on request. `SessionStore`'s calls look for a session here first, so a
  local session pays nothing for the backend seam (see `DSPex.Bridge.SessionStore.Backend`).

  These callbacks answer for this node's sessions alone: a session that lives elsewhere
  (an HA owner, Redis) is `{:error, :session_not_found}` here.
  """

  @behaviour DSPex.Bridge.SessionStore.Backend

  alias DSPex.Bridge.SessionStore
  alias DSPex.Bridge.SessionStore.Backend

  @impl true
  def create_session(meta), do: SessionStore.create_here(meta)

  # The edges are in meta.core too (rebuilt from the snapshot by its codec).
  @impl true
  def import_session(meta, vars, histories, _edges),
    do: SessionStore.import_here(meta, vars, histories)

  @impl true
  def list_sessions,
    do: :ets.select(SessionStore.Tables.sessions(), [{{:"$1", :_, :_, :_}, [], [:"$1"]}])

  for {fun, arity} <-
        Backend.session_callbacks() ++ [export_session: 1, watch: 3, unwatch: 3] do
    args = Macro.generate_arguments(arity, __MODULE__)

    @impl true
    def unquote(fun)(unquote_splicing(args)), do: SessionStore.here(unquote(fun), unquote(args))
  end
end
