defmodule DSPex.Bridge.SessionStore.RedisBackend.Access do
  @moduledoc false
  # Access policies of Redis sessions' variables, and the calls of other sessions on them.
  #
  # A policy is stored once, in the session hash (`a:f`, with a version `p:f` that every
  # change bumps). Each node keeps the policies it has used in its own ACL engine (the NIF's,
  # where local sessions' policies live too), with the version it loaded. A decision is never
  # made on a stale policy: a read returns the policy with the value in one script, and the
  # node reloads its copy when the version differs; a write carries the version it was
  # allowed on, and the writing script refuses it if the policy changed meanwhile (the write
  # is then decided again). So no allow outlives a change, on any node.

  alias DSPex.Bridge.{AccessControl, Native}
  alias DSPex.Bridge.SessionStore.RedisBackend
  alias DSPex.Bridge.SessionStore.RedisBackend.Scripts

  @retries 5

  @doc false
  # Checks rules with the engine, without keeping them.
  def validate(_id, _name, _mode, rules), do: Native.acl_validate(rules)

  # ---------------------------------------------------------------------------------------
  # another session's calls (SessionStore's, routed here by Backends)

  def get_variable(backend, id, name, caller, context) do
    with {:ok, [{^name, var, policy}]} <- RedisBackend.read_with_policies(backend, id, [name]),
         :ok <- decide(backend, id, name, var, policy, caller, :read, context),
         do: var
  end

  def list_variables(backend, id, caller, context) do
    with {:ok, vars} <- RedisBackend.list_variables(backend, id),
         {:ok, rows} <- RedisBackend.read_with_policies(backend, id, Enum.map(vars, & &1.name)) do
      readable =
        for {name, {:ok, var}, policy} <- rows,
            decide(backend, id, name, {:ok, var}, policy, caller, :read, context) == :ok,
            do: var

      {:ok, readable}
    end
  end

  def get_history(backend, id, name, caller, context) do
    with {:ok, _var} <- get_variable(backend, id, name, caller, context),
         do: RedisBackend.get_history(backend, id, name)
  end

  # `updates` checked by SessionStore; a batch names the variable a failure is about.
  def update_variables(backend, id, updates, opts, caller, context, retries \\ @retries) do
    names = Enum.map(updates, &elem(&1, 0))

    with {:ok, rows} <- RedisBackend.read_with_policies(backend, id, names),
         {:ok, versions} <- allowed_versions(backend, id, rows, caller, context) do
      opts = Map.put(opts, :policy_versions, versions)

      case RedisBackend.update_variables(backend, id, updates, opts) do
        {:error, reason} when reason in [:policy_changed] and retries > 0 ->
          update_variables(backend, id, updates, opts, caller, context, retries - 1)

        {:error, {_name, :policy_changed}} when retries > 0 ->
          update_variables(backend, id, updates, opts, caller, context, retries - 1)

        result ->
          result
      end
    end
  end

  defp allowed_versions(backend, id, rows, caller, context) do
    Enum.reduce_while(rows, {:ok, %{}}, fn {name, var, {_, _, version} = policy}, {:ok, acc} ->
      case decide(backend, id, name, var, policy, caller, :write, context) do
        :ok -> {:cont, {:ok, Map.put(acc, name, version)}}
        # As on the local backend, a denial names no variable.
        error -> {:halt, error}
      end
    end)
  end

  # A missing variable and a forbidden one look the same to another session.
  defp decide(_backend, _id, _name, {:error, _}, _policy, _caller, _permission, _context),
    do: {:error, :access_denied}

  defp decide(backend, id, name, {:ok, _var}, policy, caller, permission, context) do
    :ok = load(backend, id, name, policy)
    AccessControl.decide({id, name}, caller, permission, context)
  end

  # This node's engine holds `policy` at its version.
  defp load(backend, id, name, {mode, rules, version}) do
    key = {:policy, id, name}

    case :ets.lookup(backend.schemas, key) do
      [{_, ^version, _}] ->
        :ok

      _ ->
        :ok = Native.acl_set_policy(id, name, mode, rules)
        :ets.insert(backend.schemas, {key, version, nil})
        :ok
    end
  end

  # ---------------------------------------------------------------------------------------
  # AccessControl's calls on a Redis session's variable (owner only, as on a local one)

  def get_policy(backend, id, name) do
    with {:ok, [{^name, {:ok, _}, {mode, rules, _}}]} <-
           RedisBackend.read_with_policies(backend, id, [name]) do
      {:ok, %{mode: mode, rules: rules}}
    else
      {:ok, [{_, error, _}]} -> error
      error -> error
    end
  end

  # `change` is AccessControl's message: {:set_mode, m}, {:add_rule, canonical},
  # {:remove_rule, id}. The engine applies it (and checks it) on this node's copy, and the
  # result is stored if the policy is still the version it started from.
  def change(backend, id, name, change, retries \\ @retries) do
    with {:ok, [{^name, {:ok, _}, {_, _, version} = policy}]} <-
           RedisBackend.read_with_policies(backend, id, [name]),
         :ok <- load(backend, id, name, policy),
         # From here the engine's copy is not what the server holds: reloaded unless stored.
         true <- :ets.delete(backend.schemas, {:policy, id, name}),
         :ok <- apply_change(id, name, change),
         {mode, rules} <- Native.acl_policy(id, name) do
      args = [RedisBackend.encode_id(name), version, :erlang.term_to_binary({mode, rules})]

      case RedisBackend.run_session_script(backend, Scripts.policy_write(), id, args) do
        {:ok, ["ok", new_version]} ->
          :ets.insert(backend.schemas, {{:policy, id, name}, new_version, nil})
          :ok

        {:ok, "changed"} when retries > 0 ->
          change(backend, id, name, change, retries - 1)

        {:ok, "changed"} ->
          {:error, :policy_contended}

        {:ok, "missing"} ->
          {:error, {:variable_not_found, name}}

        error ->
          error
      end
    else
      {:ok, [{_, {:error, _} = error, _}]} ->
        error

      {:error, _} = error ->
        error

      nil ->
        {:error, {:variable_not_found, name}}
    end
  end

  defp apply_change(id, name, {:set_mode, mode}), do: Native.acl_set_mode(id, name, mode)

  defp apply_change(id, name, {:add_rule, rule}) do
    case Native.acl_add_rule(id, name, rule) do
      :ok -> :ok
      {:error, reason} -> {:error, {:invalid_rule, 0, reason}}
    end
  end

  defp apply_change(id, name, {:remove_rule, rule_id}),
    do: Native.acl_remove_rule(id, name, rule_id)

  # check_permission on a Redis variable: the policy as it is now.
  def check(backend, id, name, caller, permission, context) do
    with {:ok, [{^name, var, policy}]} <- RedisBackend.read_with_policies(backend, id, [name]),
         do: decide(backend, id, name, var, policy, caller, permission, context)
  end
end
