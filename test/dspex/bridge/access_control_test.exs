defmodule DSPex.Bridge.AccessControlTest do
  use ExUnit.Case, async: true
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{AccessControl, SessionStore, Variable}

  doctest DSPex.Bridge.AccessControl

  defp variable!(s, name, opts \\ []) do
    {:ok, _} = SessionStore.register_variable(s, name, :integer, 1, opts)
    {s, name}
  end

  describe "decisions" do
    test "private by default; the owner may do everything" do
      s = session!()
      v = variable!(s, :x)
      assert :ok = AccessControl.check_permission(v, s, :optimize)

      for p <- [:read, :write, :observe, :optimize],
          do: assert({:error, :access_denied} = AccessControl.check_permission(v, "other", p))

      assert {:ok, []} = AccessControl.get_permissions(v, "other")
      assert {:ok, [:read, :write, :observe, :optimize]} = AccessControl.get_permissions(v, s)
    end

    test "modes: protected allows read, public read and observe" do
      s = session!()
      v = variable!(s, :x, access_mode: :protected)
      assert {:ok, [:read]} = AccessControl.get_permissions(v, "other")
      :ok = AccessControl.set_access_mode(v, :public)
      assert {:ok, [:read, :observe]} = AccessControl.get_permissions(v, "other")
    end

    test "implications: write grants read, optimize grants write and read" do
      s = session!()

      v =
        variable!(s, :x,
          access_rules: [[id: "opt", session_pattern: {:exact, "tuner"}, permissions: [:optimize]]]
        )

      assert {:ok, [:read, :write, :optimize]} = AccessControl.get_permissions(v, "tuner")
    end

    test "glob rule for admins, deny override at equal priority, higher priority wins" do
      s = session!()

      v =
        variable!(s, :x,
          access_rules: [
            %{id: "admins", session_pattern: "admin_*", permissions: [:write]},
            %{
              id: "no_interns",
              session_pattern: {:suffix, "_intern"},
              permissions: [:read],
              effect: :deny
            }
          ]
        )

      assert :ok = AccessControl.check_permission(v, "admin_ann", :write)
      assert {:error, :access_denied} = AccessControl.check_permission(v, "admin_intern", :read)

      assert {:ok, %{allowed: false, decided_by: {:rule, "no_interns", :deny, 0}}} =
               AccessControl.explain(v, "admin_intern", :write)

      :ok =
        AccessControl.add_rule(v,
          id: "boss",
          session_pattern: {:exact, "admin_intern"},
          permissions: [:read],
          priority: 5
        )

      assert :ok = AccessControl.check_permission(v, "admin_intern", :read)
      assert {:ok, %{decided_by: {:default, :private}}} = AccessControl.explain(v, "guest", :read)
      assert {:ok, %{decided_by: :owner, allowed: true}} = AccessControl.explain(v, s, :write)
    end

    test "regex patterns and context conditions" do
      s = session!()

      v =
        variable!(s, :x,
          access_rules: [
            %{
              id: "office",
              session_pattern: {:regex, "^worker-[0-9]+$"},
              permissions: [:read],
              conditions: %{
                ip: {:cidr, ["10.0.0.0/8"]},
                level: {:between, 2, 5},
                role: {:in, ["ops", "dev"]}
              }
            }
          ]
        )

      good = %{ip: "10.2.3.4", level: 3, role: "ops"}
      assert :ok = AccessControl.check_permission(v, "worker-7", :read, good)
      assert {:error, :access_denied} = AccessControl.check_permission(v, "worker-x", :read, good)

      assert {:error, :access_denied} =
               AccessControl.check_permission(v, "worker-7", :read, %{good | ip: "192.168.1.1"})

      assert {:error, :access_denied} =
               AccessControl.check_permission(v, "worker-7", :read, %{good | level: 9})

      assert {:error, :access_denied} =
               AccessControl.check_permission(v, "worker-7", :read, Map.delete(good, :role))

      # String keys in the context work as well as atoms.
      assert :ok =
               AccessControl.check_permission(v, "worker-7", :read, %{
                 "ip" => "10.0.0.1",
                 "level" => 2,
                 "role" => "dev"
               })
    end

    test "time windows: not yet active, active, expired" do
      s = session!()
      now = System.system_time(:millisecond)
      v = variable!(s, :x)
      :ok = AccessControl.add_rule(v, id: "later", permissions: [:read], not_before: now + 60_000)
      assert {:error, :access_denied} = AccessControl.check_permission(v, "guest", :read)

      expires = System.system_time(:millisecond) + 1_000
      :ok = AccessControl.add_rule(v, id: "brief", permissions: [:read], expires_at: expires)
      before = System.system_time(:millisecond)
      result = AccessControl.check_permission(v, "guest", :read)
      # On a loaded machine the check itself may land after the expiry; judge it by when it ran.
      cond do
        System.system_time(:millisecond) < expires -> assert result == :ok
        before >= expires -> assert result == {:error, :access_denied}
        true -> :ok
      end

      # The cached allow must not outlive the rule's expiry: wait until it has passed.
      Process.sleep(max(expires - System.system_time(:millisecond), 0) + 5)
      assert {:error, :access_denied} = AccessControl.check_permission(v, "guest", :read)
    end

    test "a cached allow ends exactly at the rule's expiry, call after call" do
      # Hits are judged by the kernel's coarse clock when it can tell, by the precise clock
      # otherwise: across the expiry every call must agree with the OS time around it. The
      # property needs an allow cached before the expiry and calls after it; neither
      # depends on when the scheduler runs this process: calls go on until 50 of them
      # started after the expiry, and a round in which no call finished before the expiry
      # (a pause longer than the whole window) is run again with a new rule.
      s = session!()
      v = variable!(s, :x)

      outcomes =
        Enum.find_value(1..20, fn round ->
          expires = :os.system_time(:millisecond) + 40

          :ok =
            AccessControl.add_rule(v,
              id: "brief_#{round}",
              permissions: [:read],
              expires_at: expires
            )

          outcomes = calls_until(v, expires, 50)

          allowed_before =
            Enum.count(outcomes, fn {_, r, later} -> r == :ok and later < expires end)

          :ok = AccessControl.remove_rule(v, "brief_#{round}")
          # Two allowed calls: the first decides and caches, the second is served from the cache.
          if allowed_before > 1, do: {expires, outcomes}
        end)

      assert {expires, outcomes} = outcomes, "no call finished inside a 40 ms window in 20 rounds"

      for {before, result, later} <- outcomes do
        cond do
          later < expires -> assert result == :ok
          before >= expires -> assert result == {:error, :access_denied}
          true -> :ok
        end
      end

      assert Enum.count(outcomes, fn {before, _, _} -> before >= expires end) >= 50
    end

    test "a policy change is seen at once (no stale cached allow)" do
      s = session!()
      v = variable!(s, :x, access_rules: [[id: "r", permissions: [:read]]])
      assert :ok = AccessControl.check_permission(v, "guest", :read)
      assert :ok = AccessControl.check_permission(v, "guest", :read)
      :ok = AccessControl.remove_rule(v, "r")
      assert {:error, :access_denied} = AccessControl.check_permission(v, "guest", :read)
    end
  end

  describe "session isolation through SessionStore" do
    test "each path checks the right permission" do
      s = session!()

      {:ok, _} =
        SessionStore.register_variable(s, :shared, :integer, 1,
          access_rules: [[id: "r", session_pattern: "reader", permissions: [:read]]]
        )

      {:ok, _} =
        SessionStore.register_variable(s, :open, :integer, 1,
          access_rules: [[id: "w", session_pattern: "writer", permissions: [:write, :observe]]]
        )

      {:ok, _} = SessionStore.register_variable(s, :secret, :integer, 1)

      r = [caller: "reader"]
      w = [caller: "writer"]
      assert {:ok, %Variable{value: 1}} = SessionStore.get_variable(s, :shared, r)
      assert {:ok, [%{version: 1}]} = SessionStore.get_history(s, :shared, r)
      assert {:error, :access_denied} = SessionStore.update_variable(s, :shared, 2, r)
      assert {:error, :access_denied} = SessionStore.watch(s, :shared, r)
      assert {:ok, [%Variable{name: :shared}]} = SessionStore.list_variables(s, r)

      assert {:ok, %Variable{value: 5}} = SessionStore.update_variable(s, :open, 5, w)
      assert {:ok, _} = SessionStore.watch(s, :open, w)
      assert {:ok, _} = SessionStore.rollback_variable(s, :open, 1, w)
      assert {:error, :access_denied} = SessionStore.update_variables(s, %{open: 1, secret: 2}, w)
      assert {:ok, 1} = SessionStore.get_value(s, :secret)
      assert {:ok, [%Variable{name: :open}]} = SessionStore.list_variables(s, w)

      # Learning nothing: a missing variable and a forbidden one look the same.
      assert SessionStore.get_variable(s, :secret, r) == SessionStore.get_variable(s, :nope, r)
      assert {:ok, []} = SessionStore.list_variables("no_such_session", r)

      # Session-wide operations are the owner's.
      assert {:error, :access_denied} = SessionStore.register_variable(s, :y, :integer, 1, w)
      assert {:error, :access_denied} = SessionStore.delete_session(s, w)

      assert {:error, :access_denied} =
               AccessControl.add_rule({s, :secret}, [permissions: [:read]], caller: "writer")

      assert {:error, :access_denied} =
               AccessControl.set_access_mode({s, :secret}, :public, caller: "writer")

      assert :ok = SessionStore.delete_variable(s, :open, w)
    end

    test "policies travel with export/import and are freed with the session" do
      s = session!()

      {:ok, _} =
        SessionStore.register_variable(s, :x, :integer, 1,
          access_mode: :protected,
          access_rules: [[id: "a", session_pattern: "admin_*", permissions: [:write]]]
        )

      {:ok, bin} = SessionStore.export_session(s)
      copy = unique_id("copy")
      {:ok, ^copy} = SessionStore.import_session(bin, session_id: copy)
      assert :ok = AccessControl.check_permission({copy, :x}, "admin_z", :write)
      assert :ok = AccessControl.check_permission({copy, :x}, "anyone", :read)

      assert {:ok, %{mode: :protected, rules: [rule]}} = AccessControl.get_policy({copy, :x})
      assert {"a", {:glob, "admin_*"}, [:write], :allow, [], 0, nil, nil, nil, nil} = rule

      :ok = SessionStore.delete_session(copy)

      assert {:ok, %{allowed: false, decided_by: :no_policy}} =
               AccessControl.explain({copy, :x}, "admin_z", :write)
    end

    test "a policy is stored once, in the engine, and read back as it was given" do
      s = session!()
      {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
      rule = [id: "r", session_pattern: {:regex, "^team_[0-9]+$"}, permissions: [:read]]
      conditions = [conditions: %{"tier" => {:in, ["gold", :platinum]}, "score" => {:gt, 3}}]
      :ok = AccessControl.add_rule({s, :x}, rule ++ conditions)

      :ok =
        AccessControl.add_rule({s, :x},
          id: "w",
          session_pattern: :any,
          permissions: [:write],
          effect: :deny
        )

      :ok = AccessControl.set_access_mode({s, :x}, :public)
      :ok = AccessControl.remove_rule({s, :x}, "w")

      assert {:ok, %{mode: :public, rules: [given]}} = AccessControl.get_policy({s, :x})
      assert {"r", {:regex, "^team_[0-9]+$"}, [:read], :allow, conds, 0, nil, nil, nil, nil} = given
      assert Enum.sort(conds) == [{"score", {:gt, 3}}, {"tier", {:in, ["gold", :platinum]}}]

      # No second copy beside the engine.
      assert :ets.info(:dspex_bridge_access) == :undefined
      {:ok, bin} = SessionStore.export_session(s)
      copy = unique_id("copy")
      {:ok, ^copy} = SessionStore.import_session(bin, session_id: copy)
      on_exit(fn -> SessionStore.delete_session(copy) end)
      assert {:ok, %{mode: :public, rules: [^given]}} = AccessControl.get_policy({copy, :x})
    end
  end

  describe "bad input" do
    test "invalid rules are refused with index and reason, policy unchanged" do
      s = session!()
      v = variable!(s, :x)

      assert {:error, {:invalid_rule, 1, {:missing, :permissions}}} =
               AccessControl.validate_rules([[permissions: [:read]], [id: "b"]])

      assert {:error, {:invalid_rule, 0, {:unknown_permission, :fly}}} =
               AccessControl.validate_rules([[permissions: [:fly]]])

      assert {:error, {:invalid_rule, 0, {:bad_pattern, _}}} =
               AccessControl.validate_rules([
                 [session_pattern: {:regex, "(oops"}, permissions: [:read]]
               ])

      assert {:error, {:invalid_rule, 0, {:bad_pattern, _}}} =
               AccessControl.validate_rules([
                 [session_pattern: {:regex, "a{1000}{1000}"}, permissions: [:read]]
               ])

      assert {:error, {:invalid_rule, 0, {:bad_cidr, "10.0.0.0/40"}}} =
               AccessControl.validate_rules([
                 [permissions: [:read], conditions: %{ip: {:cidr, ["10.0.0.0/40"]}}]
               ])

      assert {:error, {:invalid_rule, 0, {:unsupported_condition, :k}}} =
               AccessControl.validate_rules([
                 [permissions: [:read], conditions: %{k: {:custom, fn _ -> true end}}]
               ])

      assert {:error, {:invalid_rule, 1, {:duplicate_rule_id, "a"}}} =
               AccessControl.validate_rules([
                 [id: "a", permissions: [:read]],
                 [id: "a", permissions: [:read]]
               ])

      assert {:error, {:invalid_rule, 0, :empty_time_window}} =
               AccessControl.validate_rules([[permissions: [:read], not_before: 10, expires_at: 5]])

      assert {:error, {:invalid_rule, 1000, :too_many_rules}} =
               AccessControl.validate_rules(List.duplicate([permissions: [:read]], 1001))

      assert {:error, {:invalid_rule, 0, {:unknown_key, :colour}}} =
               AccessControl.validate_rules([[permissions: [:read], colour: :red]])

      assert {:error, {:invalid_rule, 0, _}} =
               AccessControl.add_rule(v, session_pattern: {:regex, "("}, permissions: [:read])

      assert {:ok, %{rules: []}} = AccessControl.get_policy(v)
      assert {:error, {:invalid_mode, :secret}} = AccessControl.set_access_mode(v, :secret)
      assert {:error, {:unknown_rule, "zz"}} = AccessControl.remove_rule(v, "zz")

      assert {:error, {:invalid_rule, 0, _}} =
               SessionStore.register_variable(s, :y, :integer, 1,
                 access_rules: [[permissions: [:read], session_pattern: {:regex, "["}]]
               )

      assert {:error, {:variable_not_found, :y}} = SessionStore.get_variable(s, :y)
    end

    test "bad requests get clear errors" do
      s = session!()
      v = variable!(s, :x)
      assert {:error, {:invalid_permission, :fly}} = AccessControl.check_permission(v, "g", :fly)
      assert {:error, {:invalid_context, [1]}} = AccessControl.check_permission(v, "g", :read, [1])
      assert {:error, {:invalid_variable, :x}} = AccessControl.check_permission(:x, "g", :read)
      assert {:error, {:invalid_session_id, 5}} = AccessControl.check_permission(v, 5, :read)

      assert {:error, {:invalid_context, "ctx"}} = AccessControl.explain(v, "g", :read, "ctx")

      assert {:error, {:invalid_requests, :x}} = AccessControl.check_permissions_batch(:x, "g")

      assert [
               {^v, :read, {:error, :access_denied}},
               {:bad, nil, {:error, {:invalid_request, :bad}}}
             ] = AccessControl.check_permissions_batch([{v, :read}, :bad], "g")

      # Context values no condition can test are ignored, never a crash.
      assert {:error, :access_denied} =
               AccessControl.check_permission(v, "g", :read, %{
                 a: [1],
                 b: %{},
                 c: self(),
                 d: Bitwise.bsl(1, 80)
               })
    end

    test "random terms never crash the rule decoder" do
      terms = [
        nil,
        1,
        -1,
        1.5,
        "",
        "x",
        :x,
        [],
        [1],
        {},
        {:glob},
        {:regex, 1},
        %{},
        %{permissions: :read},
        [permissions: []],
        [permissions: [:read], session_pattern: {:exact, 1}],
        [permissions: [:read], conditions: %{a: {:in, [self()]}}],
        [permissions: [:read], priority: 1.5],
        [permissions: [:read], not_before: -1],
        [permissions: [:read], conditions: [1, 2]],
        [permissions: [:read], conditions: %{1 => {:equals, 1}}],
        [permissions: [:read], effect: :maybe],
        [permissions: [:read], conditions: %{a: {:gt, "1"}}],
        [permissions: [:read], conditions: %{a: {:between, 3, 1}}],
        [permissions: [:read], conditions: %{a: {:equals, Bitwise.bsl(1, 70)}}]
      ]

      for a <- terms, b <- terms do
        assert match?({:error, {:invalid_rule, _, _}}, AccessControl.validate_rules([a, b])) or
                 AccessControl.validate_rules([a, b]) == :ok
      end

      assert {:error, {:invalid_rule, 0, {:not_a_list, :x}}} = AccessControl.validate_rules(:x)
    end
  end

  # Checks `v` for "guest" until `after_expiry` calls have started at or after `expires`.
  defp calls_until(v, expires, after_expiry, acc \\ [], seen \\ 0)

  defp calls_until(_v, _expires, after_expiry, acc, seen) when seen >= after_expiry,
    do: Enum.reverse(acc)

  defp calls_until(v, expires, after_expiry, acc, seen) do
    before = :os.system_time(:millisecond)
    result = AccessControl.check_permission(v, "guest", :read)
    outcome = {before, result, :os.system_time(:millisecond)}
    seen = if before >= expires, do: seen + 1, else: seen
    calls_until(v, expires, after_expiry, [outcome | acc], seen)
  end
end
