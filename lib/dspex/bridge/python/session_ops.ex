defmodule DSPex.Bridge.Python.SessionOps do
  @moduledoc false
  # The ctx.* requests of a Python tool, carried out on behalf of the session of the call it
  # serves: `caller:` is always that session, whatever the request says; naming another
  # session (`session`) asks for its variable through its access policy.
  #
  # Python names variables and sessions by text. A name is resolved to the id Elixir uses
  # (a string, or an atom that already exists and names a variable or a live session):
  # no atom is ever created from what Python sends.
  #
  # Optimizer locks taken from Python are held on behalf of the worker's process (`holder`):
  # a worker that dies releases them. A run is reachable only from calls of the session
  # that started it.

  alias DSPex.Bridge.{
    AccessControl,
    DependencyManager,
    OptimizerCoordinator,
    Options,
    SessionStore,
    Variable
  }

  alias DSPex.Bridge.SessionStore.{Backends, Tables}

  @max_batch_read 1_000

  @type outcome ::
          {:ok, term()}
          | {:error, String.t(), String.t()}
          | {:error, String.t(), String.t(), term()}

  @spec run(term(), String.t(), map(), pid()) :: outcome()
  def run(session, op, args, holder \\ self())

  def run(nil, _op, _args, _holder), do: {:error, "no_session", "this call serves no session"}

  def run(session, op, args, holder) do
    result =
      if op == "start_optimization",
        do: start_optimization(session, args, holder),
        else: op(op, session, args)

    case result do
      :ok -> {:ok, nil}
      {:ok, value} -> {:ok, value}
      {:error, reason} -> error(reason)
    end
  rescue
    e -> {:error, "internal_error", Exception.message(e)}
  end

  defp op("get_variable", session, args) do
    with {:ok, owner} <- target_session(session, args["session"]),
         {:ok, name} <- variable(owner, args["name"]),
         {:ok, var} <- SessionStore.get_variable(owner, name, caller: session) do
      {:ok, variable_map(var)}
    end
  end

  # Several variables in one request; the ones that are missing or that the caller may not
  # read are left out, as DSPex's StateProvider get_variables/2 does.
  defp op("get_variables", session, %{"names" => names}) when is_list(names) do
    if length(names) > @max_batch_read do
      {:error, {:too_many_names, @max_batch_read}}
    else
      Enum.reduce_while(names, {:ok, %{}}, fn text, {:ok, acc} ->
        with {:ok, name} <- variable(session, text),
             {:ok, var} <- SessionStore.get_variable(session, name, caller: session) do
          {:cont, {:ok, Map.put(acc, text, variable_map(var))}}
        else
          {:error, reason}
          when reason == :access_denied or elem(reason, 0) == :variable_not_found ->
            {:cont, {:ok, acc}}

          error ->
            {:halt, error}
        end
      end)
    end
  end

  defp op("set_variable", session, args) do
    opts = if v = args["expected_version"], do: [expected_version: v], else: []
    opts = if t = args["token"], do: [lock_token: t] ++ opts, else: opts

    with {:ok, name} <- variable(session, args["name"]),
         {:ok, var} <-
           SessionStore.update_variable(session, name, args["value"], [caller: session] ++ opts) do
      {:ok, variable_map(var)}
    end
  end

  defp op("register_variable", session, args) do
    with {:ok, type} <- type(args["type"]),
         {:ok, name} <- new_name(args["name"]),
         {:ok, var} <-
           SessionStore.register_variable(session, name, type, args["value"],
             constraints: constraints(args["constraints"]),
             caller: session
           ) do
      {:ok, variable_map(var)}
    end
  end

  defp op("list_variables", session, _args) do
    with {:ok, vars} <- SessionStore.list_variables(session, caller: session),
         do: {:ok, Enum.map(vars, &variable_map/1)}
  end

  defp op("get_history", session, args) do
    with {:ok, name} <- variable(session, args["name"]),
         {:ok, entries} <- SessionStore.get_history(session, name, caller: session) do
      entries = if is_integer(args["limit"]), do: Enum.take(entries, args["limit"]), else: entries

      {:ok,
       Enum.map(
         entries,
         &%{"version" => &1.version, "value" => &1.value, "updated_at" => &1.updated_at}
       )}
    end
  end

  defp op("rollback_variable", session, args) do
    with {:ok, name} <- variable(session, args["name"]),
         {:ok, var} <-
           SessionStore.rollback_variable(session, name, args["version"], caller: session) do
      {:ok, variable_map(var)}
    end
  end

  defp op("add_dependency", session, args) do
    with {:ok, from} <- variable(session, args["from"]),
         {:ok, to} <- variable(session, args["to"]) do
      DependencyManager.add_dependency(session, from, to, :data, caller: session)
    end
  end

  defp op(which, session, args) when which in ["get_dependencies", "get_dependents"] do
    with {:ok, name} <- variable(session, args["name"]) do
      result =
        if which == "get_dependencies",
          do: DependencyManager.get_dependencies(session, name, caller: session),
          else: DependencyManager.get_dependents(session, name, caller: session)

      with {:ok, names} <- result, do: {:ok, Enum.map(names, &text/1)}
    end
  end

  defp op("check_access", session, args) do
    with {:ok, owner} <- target_session(session, args["session"]),
         {:ok, name} <- variable(owner, args["name"]),
         {:ok, permission} <- permission(args["permission"]) do
      {:ok, AccessControl.check_permission({owner, name}, session, permission) == :ok}
    end
  end

  defp op("set_variable_permissions", session, args) do
    with {:ok, name} <- variable(session, args["name"]),
         rules when is_list(rules) <- args["rules"] || {:error, {:invalid_rules, nil}} do
      Enum.reduce_while(rules, :ok, fn rule, :ok ->
        case AccessControl.add_rule({session, name}, rule_keywords(rule), caller: session) do
          :ok -> {:cont, :ok}
          error -> {:halt, error}
        end
      end)
    end
  end

  defp op("report_progress", session, args) do
    with {:ok, _run} <- own_run(session, args["id"]) do
      OptimizerCoordinator.report_progress(
        args["id"],
        args["iteration"],
        args["value"],
        args["metrics"] || %{}
      )
    end
  end

  defp op("stop_optimization", session, args) do
    with {:ok, _run} <- own_run(session, args["id"]) do
      if args["complete"] == true do
        with {:ok, var} <-
               OptimizerCoordinator.complete_optimization(
                 args["id"],
                 args["final_value"],
                 args["metrics"] || %{}
               ),
             do: {:ok, variable_map(var)}
      else
        with :ok <- OptimizerCoordinator.fail_optimization(args["id"], :stopped), do: {:ok, nil}
      end
    end
  end

  defp op("get_optimization_status", session, args) do
    with {:ok, run} <- own_run(session, args["id"]) do
      {:ok, Map.new(run, fn {k, v} -> {Atom.to_string(k), status_value(v)} end)}
    end
  end

  defp op(other, _session, _args), do: {:error, {:unknown_op, other}}

  defp start_optimization(session, args, holder) do
    timeout = args["timeout_ms"] || 5_000

    conflict =
      Map.get(
        %{"wait" => :wait, "abort" => :abort, "preempt" => :preempt},
        args["conflict"] || "wait"
      )

    with {:ok, name} <- variable(session, args["name"]),
         {:ok, objective} <- objective(args["objective"]),
         true <- conflict != nil || {:error, {:invalid_conflict, args["conflict"]}},
         optimizer = args["optimizer_id"] || "python:#{text(name)}",
         {:ok, lock} <-
           OptimizerCoordinator.acquire_lock(name, optimizer, holder,
             session_id: session,
             caller: session,
             timeout: timeout,
             priority: args["priority"] || 0,
             conflict_resolution: conflict
           ),
         {:ok, id} <- start_run(lock, objective) do
      {:ok, %{"id" => id, "token" => lock.token, "name" => text(name), "optimizer_id" => optimizer}}
    end
  end

  defp objective(nil), do: {:ok, {:minimize, "loss"}}

  defp objective([dir, metric]) when dir in ["minimize", "maximize"] and is_binary(metric),
    do: {:ok, {String.to_existing_atom(dir), metric}}

  defp objective(other), do: {:error, {:invalid_objective, other}}

  # Starts the run over a lock just taken; a refused start gives the lock back.
  defp start_run(lock, objective) do
    case OptimizerCoordinator.start_optimization(lock, objective: objective) do
      {:ok, id} ->
        {:ok, id}

      error ->
        OptimizerCoordinator.release_lock(lock.var_id, lock.optimizer_id,
          session_id: lock.session_id
        )

        error
    end
  end

  defp own_run(session, id) when is_binary(id) do
    case OptimizerCoordinator.get_optimization_status(id) do
      {:ok, %{session_id: ^session} = run} -> {:ok, run}
      _ -> {:error, {:unknown_optimization, id}}
    end
  end

  defp own_run(_session, id), do: {:error, {:unknown_optimization, id}}

  defp status_value(v) when is_tuple(v), do: Tuple.to_list(v)
  defp status_value(v), do: v

  @doc false
  # An error as a reply outcome (what a request answers).
  def error_outcome({:error, reason}), do: error(reason)

  @doc false
  # A watched name, resolved as every other name is.
  def resolve_variable(session, text), do: variable(session, text)

  @doc false
  def name_text(name), do: text(name)

  # ---------------------------------------------------------------------------------------
  # names: text from Python to the ids Elixir uses, never creating an atom

  defp target_session(session, nil), do: {:ok, session}

  defp target_session(_session, text) when is_binary(text) do
    case Enum.find(Options.spellings(text), &(&1 in SessionStore.list_sessions())) do
      nil -> {:error, :session_not_found}
      id -> {:ok, id}
    end
  end

  defp target_session(_session, other), do: {:error, {:invalid_session_id, other}}

  defp variable(session, text) when is_binary(text) do
    spellings = Options.spellings(text)

    found =
      if :ets.member(Tables.sessions(), session),
        do: Enum.find(spellings, &:ets.member(Tables.variables(), {session, &1})),
        else: Backends.existing_name(session, spellings)

    {:ok, found || text}
  end

  defp variable(_session, other), do: {:error, {:invalid_name, other}}

  # A new variable is named by a string: Python's text, exactly.
  defp new_name(text) when is_binary(text), do: {:ok, text}
  defp new_name(other), do: {:error, {:invalid_name, other}}

  @types ~w(float integer string boolean choice module embedding tensor json)
  defp type(t) when t in @types, do: {:ok, String.to_existing_atom(t)}
  defp type(t), do: {:error, {:invalid_type, t}}

  @permissions ~w(read write observe optimize)
  defp permission(p) when p in @permissions, do: {:ok, String.to_existing_atom(p)}
  defp permission(p), do: {:error, {:invalid_permission, p}}

  @constraint_keys ~w(min max min_length max_length choices dimensions shape max_items)
  defp constraints(c) when is_map(c) do
    for {k, v} <- c, k in @constraint_keys, into: %{}, do: {String.to_existing_atom(k), v}
  end

  defp constraints(_), do: %{}

  @rule_keys ~w(id session_pattern permissions effect priority)
  defp rule_keywords(rule) when is_map(rule) do
    for {k, v} <- rule, k in @rule_keys do
      key = String.to_existing_atom(k)

      value =
        case key do
          :permissions when is_list(v) -> Enum.flat_map(v, &atom_list(&1, @permissions))
          :effect -> hd(atom_list(v, ~w(allow deny)) ++ [v])
          _ -> v
        end

      {key, value}
    end
  end

  defp rule_keywords(other), do: other

  defp atom_list(v, allowed), do: if(v in allowed, do: [String.to_existing_atom(v)], else: [v])

  # ---------------------------------------------------------------------------------------
  # answers

  defp variable_map(%Variable{} = v) do
    %{
      "name" => text(v.name),
      "type" => Atom.to_string(v.type),
      "value" => v.value,
      "version" => v.version,
      "metadata" => v.metadata
    }
  end

  defp text(name) when is_atom(name), do: Atom.to_string(name)
  defp text(name), do: name

  defp error({:version_mismatch, current}),
    do: {:error, "version_mismatch", "the stored version is #{current}", current}

  defp error({:locked_by, holder}),
    do: {:error, "locked_by", "an optimizer holds the lock: #{inspect(holder)}", text(holder)}

  defp error({:lock_held_by, holder}),
    do:
      {:error, "lock_held_by", "another optimizer holds the lock: #{inspect(holder)}", text(holder)}

  defp error(:access_denied), do: {:error, "access_denied", "access denied"}

  defp error(reason) when is_atom(reason),
    do: {:error, Atom.to_string(reason), Atom.to_string(reason)}

  defp error(reason) when is_tuple(reason) and is_atom(elem(reason, 0)),
    do: {:error, Atom.to_string(elem(reason, 0)), inspect(reason)}

  defp error(reason), do: {:error, "error", inspect(reason)}
end
