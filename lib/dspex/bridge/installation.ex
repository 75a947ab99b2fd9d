defmodule DSPex.Bridge.Installation do
  @moduledoc false
  # The process behind the child specs of things that live without a process of their own
  # (a breaker or a limiter in ETS, a /metrics listener under :inets): it installs the thing
  # when it starts and removes it when it stops, so the thing lives exactly as long as the
  # supervision tree that holds it.
  #
  # `install` is an MFA returning {:ok, handle} or {:error, reason}; `uninstall` an
  # {module, function} called with the handle. A linked process that exits (the listener)
  # takes this one with it, and the supervisor starts both again.
  use GenServer

  @spec child_spec(map()) :: Supervisor.child_spec()
  def child_spec(%{id: id, install: install, uninstall: uninstall}) do
    %{id: id, start: {__MODULE__, :start_link, [install, uninstall]}}
  end

  def start_link(install, uninstall), do: GenServer.start_link(__MODULE__, {install, uninstall})

  @impl true
  def init({{m, f, a}, uninstall}) do
    Process.flag(:trap_exit, true)

    case apply(m, f, a) do
      {:ok, handle} -> {:ok, {uninstall, handle}}
      {:error, reason} -> {:stop, reason}
    end
  end

  @impl true
  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, {{m, f}, handle}) do
    apply(m, f, [handle])
    :ok
  end
end
