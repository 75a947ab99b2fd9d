defmodule DSPex.Bridge.SessionStoreProviderClusterTest do
  @moduledoc """
  SessionStoreProvider's `distributed: true` on real `:peer` nodes: a context on any node
  uses the session its owner holds, and the session outlives its owner's crash.
  """
  use ExUnit.Case, async: false

  alias DSPex.Bridge.{HAManager, SessionStoreProvider}
  alias DSPex.Bridge.HAManager.LocalCluster
  import DSPex.Bridge.TestHelpers, only: [eventually: 2]

  @moduletag timeout: 180_000

  setup_all do
    :ok = LocalCluster.ensure_distributed(:dspex_provider_test)
    :ok
  end

  defp on(node, fun, args), do: :erpc.call(node, SessionStoreProvider, fun, args, 30_000)

  test "a context on another node shares the session, and it survives its owner" do
    {:ok, [a, b] = nodes} = LocalCluster.start_peers(["provider_a", "provider_b"])
    on_exit(fn -> LocalCluster.stop_peers(nodes) end)
    id = "provider_cluster_#{System.unique_integer([:positive])}"

    {:ok, on_a} = on(a, :init, [[session_id: id]])
    {:ok, {"temperature", _}} = on(a, :register_variable, [on_a, :temperature, :float, 0.5, []])
    assert {:ok, ^a} = HAManager.get_session_owner(id)

    # b does not make a second session of that id: it uses a's, through routing.
    {:ok, on_b} = on(b, :init, [[session_id: id]])
    assert {:ok, 0.5} = on(b, :get_variable, [on_b, :temperature])
    assert {:ok, _} = on(b, :set_variable, [on_b, :temperature, 0.8, %{from: "b"}])
    assert {:ok, 0.8} = on(a, :get_variable, [on_a, :temperature])
    assert {:ok, %{"temperature" => 0.8}} = on(b, :get_variables, [on_b, [:temperature]])

    # The owner crashes: its replica takes over with every acknowledged write.
    :ok = LocalCluster.kill(a)
    eventually(fn -> HAManager.get_session_owner(id) == {:ok, b} end, 30_000)
    assert {:ok, 0.8} = on(b, :get_variable, [on_b, :temperature])
    assert {:ok, _} = on(b, :set_variable, [on_b, :temperature, 0.9, %{}])
    assert {:ok, 0.9} = on(b, :get_variable, [on_b, "temperature"])
  end
end
