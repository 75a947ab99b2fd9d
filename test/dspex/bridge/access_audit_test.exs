defmodule DSPex.Bridge.AccessAuditTest do
  # Not async: any policy change anywhere invalidates the whole decision cache, so the
  # cache-hit assertion needs no other test changing policies meanwhile.
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{AccessControl, Events, SessionStore}

  describe "audit and events" do
    test "denials are logged and queryable; decisions are events with cache_hit" do
      :ok = Events.subscribe([:dspex, :bridge, :access])
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      v = {s, :x}
      {:error, :access_denied} = AccessControl.check_permission(v, "intruder_#{s}", :write)

      assert_receive {:dspex_event, [:dspex, :bridge, :access, :decision],
                      %{duration_us: _, cache_hit: false}, %{allowed: false}}

      assert_receive {:dspex_event, [:dspex, :bridge, :access, :denied], _,
                      %{session_id: "intruder_" <> _}}

      {:error, :access_denied} = AccessControl.check_permission(v, "intruder_#{s}", :write)
      assert_receive {:dspex_event, [:dspex, :bridge, :access, :decision], %{cache_hit: true}, _}

      assert {:ok, [%{variable: ^v, permission: :write, allowed: false} | _]} =
               AccessControl.audit(session: "intruder_#{s}")

      assert {:ok, []} = AccessControl.audit(session: "intruder_#{s}", permission: :observe)
      assert {:error, {:invalid_option, {:limit, 0}}} = AccessControl.audit(limit: 0)
    end
  end
end
