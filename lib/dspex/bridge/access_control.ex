defmodule DSPex.Bridge.AccessControl do
  @moduledoc """
  Fine-grained access control between sessions: zero trust unless a rule grants access.

  Every variable of `DSPex.Bridge.SessionStore` has a policy: its **owner** (the session
  that registered it) may do everything; other sessions are decided by the variable's
  **rules**, then by its **access mode**. A variable is named as `{session_id, name}`.

  ## Decisions

  1. the owner may do everything;
  2. among the rules that are active now, match the caller session and the context, and
     apply to the permission, the **highest priority decides; at equal priority a deny
     wins**;
  3. no rule applies: `:private` (the default) denies everything, `:protected` allows
     `:read`, `:public` allows `:read` and `:observe`.

  Permissions imply others: `:write` ⇒ `:read`, `:optimize` ⇒ `:write` and `:read`,
  `:observe` ⇒ `:read`. An allow rule grants what its permissions imply; a deny rule refuses
  whatever would imply one of its permissions (denying `:read` denies `:write` too).

  ## Rules

  A rule is a map (or keyword list):

  | key               | value                                                               | default     |
  |-------------------|---------------------------------------------------------------------|-------------|
  | `:id`             | string or atom, unique per variable                                 | generated   |
  | `:session_pattern`| `:any`, `{:exact, s}`, `{:prefix, s}`, `{:suffix, s}`, `{:glob, "admin_*"}`, `{:regex, source}`, or a string (`*` makes it a glob) | `:any` |
  | `:permissions`    | non-empty subset of `[:read, :write, :observe, :optimize]`          | required    |
  | `:effect`         | `:allow` or `:deny`                                                 | `:allow`    |
  | `:conditions`     | map of context key to `{:equals, v}`, `{:not_equals, v}`, `{:in, list}`, `{:not_in, list}`, `{:matches, regex}`, `{:cidr, ["10.0.0.0/8"]}`, `{:gt | :gte | :lt | :lte, n}`, `{:between, a, b}` | `%{}` |
  | `:priority`       | integer                                                             | `0`         |
  | `:not_before`, `:expires_at` | `DateTime` or Unix milliseconds                          | `nil`       |
  | `:granted_by`, `:granted_at` | informational                                            | `nil`       |

  Regexes use the linear-time Rust `regex` crate, size-limited (no ReDoS), compiled once
  when the rule is added. A condition on a key the context lacks fails. `{:custom, fun}`
  conditions are **refused** (`{:unsupported_condition, :custom}`): the engine decides in
  Rust, under a cache, and an Elixir callback there would make every decision as slow as
  the callback and uncachable; express the condition on a context value instead.

  Invalid rules are refused at load with `{:error, {:invalid_rule, index, reason}}`, and the
  policy is unchanged.

  ## Cache

  Decisions are cached per (variable, session, permission, context). Any policy change
  invalidates the whole cache in O(1) (a version number); an entry never outlives the next
  `not_before`/`expires_at` boundary of the variable's rules; the cache holds at most
  100,000 decisions. A cached decision for a variable whose rules have no time window is
  served without reading the clock; otherwise the precise wall clock judges it to the
  millisecond.

  ## Audit and events

  Decisions are logged in a bounded audit log (`audit/1`); configure
  `config :dspex_bridge, access_audit: :denials | :all | :off` (default `:denials`) and
  `access_audit_size: 10_000`. Events: `[:dspex, :bridge, :access, :decision]` for every
  check and `[:dspex, :bridge, :access, :denied]` for denials, with `duration_us` (the
  decision inside the NIF) and `cache_hit`. An unknown audit mode in the configuration
  stops the application at start with an `ArgumentError`.

  ## Example

      iex> alias DSPex.Bridge.{AccessControl, SessionStore}
      iex> {:ok, s} = SessionStore.create_session("acl_doc")
      iex> {:ok, _} = SessionStore.register_variable(s, :t, :float, 0.5)
      iex> AccessControl.check_permission({s, :t}, "guest", :read)
      {:error, :access_denied}
      iex> :ok = AccessControl.add_rule({s, :t}, id: "admins", session_pattern: "admin_*", permissions: [:write])
      iex> AccessControl.check_permission({s, :t}, "admin_ann", :read)
      :ok
      iex> AccessControl.explain({s, :t}, "admin_ann", :write)
      {:ok, %{allowed: true, decided_by: {:rule, "admins", :allow, 0}}}
      iex> SessionStore.delete_session(s)
      :ok
  """

  alias DSPex.Bridge.HAManager.Router
  alias DSPex.Bridge.{Events, Native, Options, SessionStore}
  import DSPex.Bridge.Options, only: [is_id: 1]

  @permissions [:read, :write, :observe, :optimize]

  # A well-formed decision request; check_request/4 names what is wrong with any other.
  defguardp is_request(owner, name, session_id, permission, context)
            when is_id(owner) and is_id(name) and is_id(session_id) and
                   permission in @permissions and is_map(context)

  @modes [:private, :protected, :public]
  @max_rules 1_000
  @audit :dspex_bridge_audit

  @type variable :: {SessionStore.session_id(), SessionStore.name()}
  @type permission :: :read | :write | :observe | :optimize
  @type mode :: :private | :protected | :public
  @type rule :: map() | keyword()

  # ---------------------------------------------------------------------------------------
  # decisions

  @doc "`:ok` if `session_id` may exercise `permission` on `variable`, else `{:error, :access_denied}`."
  @spec check_permission(variable(), SessionStore.session_id(), permission(), map()) ::
          :ok | {:error, term()}
  def check_permission(variable, session_id, permission, context \\ %{})

  # A denial may come from not holding the session: its owner, on another node, decides.
  def check_permission({owner, name} = variable, session_id, permission, context)
      when is_request(owner, name, session_id, permission, context) do
    case decide(variable, session_id, permission, context) do
      :ok ->
        :ok

      denied ->
        routed(denied, owner, :check_permission, [variable, session_id, permission, context])
    end
  end

  def check_permission(variable, session_id, permission, context),
    do: check_request(variable, session_id, permission, context)

  @doc false
  # The SessionStore's entry point: arguments already checked.
  def decide({owner, name} = variable, session_id, permission, context) do
    # The NIF reads the clock and counts the decision for analytics itself, and answers a
    # bare `:ok` when the decision is an allow that neither events nor the audit log need.
    case Native.acl_check(owner, name, session_id, permission, context) do
      :ok -> :ok
      {allowed, hit, nanos} -> report(variable, session_id, permission, allowed, hit, nanos)
    end
  rescue
    ArgumentError -> {:error, :access_denied}
  end

  defp report(variable, session_id, permission, allowed, hit, nanos) do
    observed = Events.enabled?()

    if observed or audit_mode() == :all or (not allowed and audit_mode() == :denials),
      do: record(variable, session_id, permission, allowed, hit, nanos, observed)

    if allowed, do: :ok, else: {:error, :access_denied}
  end

  @audit_key :dspex_bridge_access_audit

  @doc """
  Sets what the audit log keeps: `:denials` (the default), `:all` or `:off`. Read once from
  `config :dspex_bridge, access_audit: ...` at start; this changes it at run time.
  """
  @spec configure_audit(:denials | :all | :off) :: :ok | {:error, term()}
  def configure_audit(mode) when mode in [:denials, :all, :off] do
    :persistent_term.put(@audit_key, mode)
    Native.acl_set_audit_all(mode == :all)
  end

  def configure_audit(mode), do: {:error, {:invalid_audit_mode, mode}}

  @doc false
  # At start: the audit mode from the application environment.
  @spec init_audit() :: :ok
  def init_audit do
    case configure_audit(Application.get_env(:dspex_bridge, :access_audit, :denials)) do
      :ok -> :ok
      {:error, reason} -> raise ArgumentError, "config :dspex_bridge, #{inspect(reason)}"
    end
  end

  defp audit_mode, do: :persistent_term.get(@audit_key, :denials)

  @doc "The permissions `session_id` holds on `variable`: `{:ok, [permission]}`."
  @spec get_permissions(variable(), SessionStore.session_id(), map()) ::
          {:ok, [permission()]} | {:error, term()}
  def get_permissions(variable, session_id, context \\ %{}) do
    with :ok <- check_request(variable, session_id, :read, context) do
      {owner, name} = variable

      on_owner(owner, :get_permissions, [variable, session_id, context], fn ->
        {:ok, Native.acl_permissions(owner, name, session_id, context, now())}
      end)
    end
  end

  @doc """
  Which rule (or default) decides, and the outcome:
  `{:ok, %{allowed: boolean, decided_by: :owner | {:rule, id, effect, priority} |
  {:default, mode} | :no_policy}}`.
  """
  @spec explain(variable(), SessionStore.session_id(), permission(), map()) ::
          {:ok, map()} | {:error, term()}
  def explain(variable, session_id, permission, context \\ %{})

  def explain({owner, name}, session_id, permission, context)
      when is_request(owner, name, session_id, permission, context) do
    on_owner(owner, :explain, [{owner, name}, session_id, permission, context], fn ->
      {allowed, reason} = Native.acl_explain(owner, name, session_id, permission, context)
      {:ok, %{allowed: allowed, decided_by: reason}}
    end)
  end

  def explain(variable, session_id, permission, context),
    do: check_request(variable, session_id, permission, context)

  @doc "The subset of `variables` on which `session_id` holds `permission`."
  @spec filter_accessible_variables([variable()], SessionStore.session_id(), permission(), map()) ::
          [variable()] | {:error, term()}
  def filter_accessible_variables(variables, session_id, permission \\ :read, context \\ %{})

  def filter_accessible_variables(variables, session_id, permission, context)
      when is_list(variables) do
    if Options.proper_list?(variables) do
      variables
      |> Enum.map(&{&1, permission})
      |> batch(session_id, context)
      |> Enum.flat_map(fn {variable, _, result} -> if result == :ok, do: [variable], else: [] end)
    else
      {:error, {:invalid_variables, variables}}
    end
  end

  def filter_accessible_variables(other, _, _, _), do: {:error, {:invalid_variables, other}}

  @doc """
  Checks many `{variable, permission}` pairs for one session:
  `[{variable, permission, :ok | {:error, reason}}]`, in order.
  """
  @spec check_permissions_batch([{variable(), permission()}], SessionStore.session_id(), map()) ::
          [{variable(), permission(), :ok | {:error, term()}}] | {:error, term()}
  def check_permissions_batch(requests, session_id, context \\ %{})

  def check_permissions_batch(requests, session_id, context) when is_list(requests) do
    if Options.proper_list?(requests),
      do: batch(requests, session_id, context),
      else: {:error, {:invalid_requests, requests}}
  end

  def check_permissions_batch(other, _, _), do: {:error, {:invalid_requests, other}}

  # Decided here first; the requests this node refused on sessions another node owns are
  # asked of that owner, in one call per owner node.
  defp batch(requests, session_id, context) do
    here =
      Enum.map(requests, fn
        {{owner, name} = variable, permission}
        when is_request(owner, name, session_id, permission, context) ->
          {variable, permission, decide(variable, session_id, permission, context)}

        {variable, permission} ->
          {variable, permission, check_request(variable, session_id, permission, context)}

        other ->
          {other, nil, {:error, {:invalid_request, other}}}
      end)

    answers =
      here
      |> Enum.filter(&match?({{_, _}, _, {:error, reason}} when reason == :access_denied, &1))
      |> Enum.group_by(fn {{owner, _}, _, _} -> Router.remote_owner(owner) end)
      |> Map.delete(nil)
      |> Enum.flat_map(fn {node, denied} -> ask_owner(node, denied, session_id, context) end)
      |> Map.new()

    Enum.map(here, fn {variable, permission, _} = decided ->
      case Map.fetch(answers, {variable, permission}) do
        {:ok, result} -> {variable, permission, result}
        :error -> decided
      end
    end)
  end

  # The owner's answers by request; none (this node's stand) when it cannot be asked.
  defp ask_owner(node, denied, session_id, context) do
    pairs = for {variable, permission, _} <- denied, do: {variable, permission}

    case Router.call_owner(node, __MODULE__, :check_permissions_batch, [pairs, session_id, context]) do
      results when is_list(results) ->
        for {variable, permission, result} <- results, do: {{variable, permission}, result}

      _unreachable ->
        []
    end
  end

  # ---------------------------------------------------------------------------------------
  # policy changes (owner only; serialized by the variable's session process)

  @doc "Checks rules without storing them: `:ok` or `{:error, {:invalid_rule, index, reason}}`."
  @spec validate_rules([rule()]) :: :ok | {:error, term()}
  def validate_rules(rules) do
    with {:ok, canonical} <- normalize_rules(rules) do
      Native.acl_validate(canonical)
    end
  end

  @doc """
  Adds a rule to `variable`. Only the owner may change a policy: pass `caller:` when acting
  for another session (it is refused).
  """
  @spec add_rule(variable(), rule(), keyword()) :: :ok | {:error, term()}
  def add_rule(variable, rule, opts \\ []) do
    with {:ok, [canonical]} <- normalize_rules([rule]) do
      variable
      |> policy_call({:add_rule, canonical}, opts)
      |> routed_policy(variable, :add_rule, [variable, rule, opts])
    end
  end

  @doc "Removes the rule with `rule_id` from `variable` (owner only)."
  @spec remove_rule(variable(), String.t() | atom(), keyword()) :: :ok | {:error, term()}
  def remove_rule(variable, rule_id, opts \\ []) do
    case given_rule_id(rule_id) do
      {:ok, id} ->
        variable
        |> policy_call({:remove_rule, id}, opts)
        |> routed_policy(variable, :remove_rule, [variable, rule_id, opts])

      {:error, _} ->
        {:error, {:invalid_rule_id, rule_id}}
    end
  end

  @doc "Sets `variable`'s access mode: `:private`, `:protected` or `:public` (owner only)."
  @spec set_access_mode(variable(), mode(), keyword()) :: :ok | {:error, term()}
  def set_access_mode(variable, mode, opts \\ [])

  def set_access_mode(variable, mode, opts) when mode in @modes,
    do:
      variable
      |> policy_call({:set_mode, mode}, opts)
      |> routed_policy(variable, :set_access_mode, [variable, mode, opts])

  def set_access_mode(_variable, mode, _opts), do: {:error, {:invalid_mode, mode}}

  @doc "`{:ok, %{mode: mode, rules: [canonical_rule]}}` for a variable (owner only)."
  @spec get_policy(variable(), keyword()) :: {:ok, map()} | {:error, term()}
  def get_policy(variable, opts \\ []),
    do:
      variable
      |> policy_call(:get_policy, opts)
      |> routed_policy(variable, :get_policy, [variable, opts])

  defp policy_call({session_id, name}, message, opts) when is_id(session_id) and is_id(name) do
    SessionStore.session_call(session_id, {:acl, name, message}, opts, :owner)
  end

  defp policy_call(variable, _message, _opts), do: {:error, {:invalid_variable, variable}}

  # Policies live with their session: one this node does not hold is asked of its owner.
  defp routed_policy(result, {session_id, _name}, fun, args),
    do: routed(result, session_id, fun, args)

  defp routed_policy(result, _variable, _fun, _args), do: result

  defp routed(result, session_id, fun, args),
    do: Router.routed(result, __MODULE__, session_id, fun, args)

  defp on_owner(session_id, fun, args, here) do
    case Router.remote_owner(session_id) do
      nil -> here.()
      node -> Router.call_owner(node, __MODULE__, fun, args)
    end
  end

  # ---------------------------------------------------------------------------------------
  # rule normalization: any accepted spelling -> the canonical tuple the NIF decodes

  @doc false
  @spec normalize_rules(term()) :: {:ok, [tuple()]} | {:error, term()}
  def normalize_rules(rules) when is_list(rules) and length(rules) > @max_rules,
    do: {:error, {:invalid_rule, @max_rules, :too_many_rules}}

  def normalize_rules(rules) when is_list(rules) do
    if Options.proper_list?(rules),
      do: normalize_each(rules),
      else: {:error, {:invalid_rule, 0, {:not_a_list, rules}}}
  end

  def normalize_rules(other), do: {:error, {:invalid_rule, 0, {:not_a_list, other}}}

  defp normalize_each(rules) do
    rules
    |> Enum.with_index()
    |> Options.map_ok(fn {rule, i} ->
      case normalize_rule(rule) do
        {:ok, canonical} -> {:ok, canonical}
        {:error, reason} -> {:error, {:invalid_rule, i, reason}}
      end
    end)
  end

  @rule_keys [
    :id,
    :session_pattern,
    :permissions,
    :effect,
    :conditions,
    :priority,
    :not_before,
    :expires_at,
    :granted_by,
    :granted_at
  ]

  defp normalize_rule(rule) when is_list(rule) do
    if Keyword.keyword?(rule), do: normalize_rule(Map.new(rule)), else: {:error, :not_a_map}
  end

  defp normalize_rule(rule) when is_map(rule) do
    with :ok <- known_keys(rule),
         {:ok, id} <- rule_id(Map.get(rule, :id)),
         {:ok, pattern} <- pattern(Map.get(rule, :session_pattern, :any)),
         {:ok, perms} <- permissions(Map.get(rule, :permissions)),
         {:ok, effect} <- effect(Map.get(rule, :effect, :allow)),
         {:ok, conditions} <- conditions(Map.get(rule, :conditions, %{})),
         {:ok, priority} <- priority(Map.get(rule, :priority, 0)),
         {:ok, not_before} <- time(:not_before, Map.get(rule, :not_before)),
         {:ok, expires_at} <- time(:expires_at, Map.get(rule, :expires_at)),
         {:ok, granted_at} <- time(:granted_at, Map.get(rule, :granted_at)),
         {:ok, granted_by} <- granted_by(Map.get(rule, :granted_by)) do
      {:ok,
       {id, pattern, perms, effect, conditions, priority, not_before, expires_at, granted_by,
        granted_at}}
    end
  end

  defp normalize_rule(_), do: {:error, :not_a_map}

  defp known_keys(rule) do
    case Enum.find(Map.keys(rule), &(&1 not in @rule_keys)) do
      nil -> :ok
      key -> {:error, {:unknown_key, key}}
    end
  end

  defp rule_id(nil), do: {:ok, "rule_#{System.unique_integer([:positive])}"}
  defp rule_id(id), do: given_rule_id(id)

  # Rule ids are text (the NIF keeps them as Rust strings): UTF-8 of 1..255 bytes, or an atom.
  defp given_rule_id(id) when is_binary(id) and byte_size(id) in 1..255 do
    if String.valid?(id), do: {:ok, id}, else: {:error, {:bad_id, id}}
  end

  defp given_rule_id(id) when is_atom(id), do: {:ok, Atom.to_string(id)}
  defp given_rule_id(id), do: {:error, {:bad_id, id}}

  defp pattern(:any), do: {:ok, :any}

  defp pattern(s) when is_binary(s) do
    if String.contains?(s, "*"), do: {:ok, {:glob, s}}, else: {:ok, {:exact, s}}
  end

  defp pattern({kind, s}) when kind in [:exact, :prefix, :suffix, :glob, :regex] and is_binary(s),
    do: {:ok, {kind, s}}

  defp pattern({kind, s}) when kind in [:exact, :prefix, :suffix, :glob] and is_atom(s),
    do: {:ok, {kind, Atom.to_string(s)}}

  defp pattern(other), do: {:error, {:bad_session_pattern, other}}

  defp permissions([_ | _] = perms) do
    case Enum.find(perms, &(&1 not in @permissions)) do
      nil -> {:ok, Enum.uniq(perms)}
      bad -> {:error, {:unknown_permission, bad}}
    end
  end

  defp permissions(nil), do: {:error, {:missing, :permissions}}
  defp permissions(other), do: {:error, {:bad_permissions, other}}

  defp effect(e) when e in [:allow, :deny], do: {:ok, e}
  defp effect(e), do: {:error, {:bad_effect, e}}

  defp conditions(c) when is_list(c) do
    if Keyword.keyword?(c), do: conditions(Map.new(c)), else: {:error, {:bad_conditions, c}}
  end

  defp conditions(c) when is_map(c) do
    Enum.reduce_while(c, {:ok, []}, fn {key, cond}, {:ok, acc} ->
      cond do
        not (is_atom(key) or is_binary(key)) ->
          {:halt, {:error, {:bad_condition_key, key}}}

        true ->
          case condition(cond) do
            {:ok, canonical} -> {:cont, {:ok, [{key, canonical} | acc]}}
            {:error, reason} -> {:halt, {:error, {reason, key}}}
          end
      end
    end)
  end

  defp conditions(other), do: {:error, {:bad_conditions, other}}

  defp condition({op, v}) when op in [:equals, :not_equals] do
    if value?(v), do: {:ok, {op, v}}, else: {:error, :bad_condition}
  end

  defp condition({op, list}) when op in [:in, :not_in] and is_list(list) do
    if Enum.all?(list, &value?/1), do: {:ok, {op, list}}, else: {:error, :bad_condition}
  end

  defp condition({:matches, source}) when is_binary(source), do: {:ok, {:matches, source}}

  defp condition({:cidr, blocks}) when is_list(blocks) do
    if Enum.all?(blocks, &is_binary/1), do: {:ok, {:cidr, blocks}}, else: {:error, :bad_condition}
  end

  defp condition({op, n}) when op in [:gt, :gte, :lt, :lte] and is_number(n), do: {:ok, {op, n}}

  defp condition({:between, a, b}) when is_number(a) and is_number(b) and a <= b,
    do: {:ok, {:between, a, b}}

  defp condition({:custom, _}), do: {:error, :unsupported_condition}
  defp condition(_), do: {:error, :bad_condition}

  defp value?(v) when is_binary(v) or is_atom(v) or is_float(v), do: true

  defp value?(v) when is_integer(v),
    do: v >= -9_223_372_036_854_775_808 and v <= 9_223_372_036_854_775_807

  defp value?(_), do: false

  defp priority(p) when is_integer(p) and abs(p) <= 1_000_000_000, do: {:ok, p}
  defp priority(p), do: {:error, {:bad_priority, p}}

  defp time(_key, nil), do: {:ok, nil}
  defp time(_key, %DateTime{} = dt), do: {:ok, max(DateTime.to_unix(dt, :millisecond), 0)}
  defp time(_key, ms) when is_integer(ms) and ms >= 0 and ms < 0xFFFFFFFFFFFF, do: {:ok, ms}
  defp time(key, other), do: {:error, {:bad_time, key, other}}

  defp granted_by(nil), do: {:ok, nil}
  defp granted_by(s) when is_binary(s), do: {:ok, s}
  defp granted_by(a) when is_atom(a), do: {:ok, Atom.to_string(a)}
  defp granted_by(other), do: {:error, {:bad_granted_by, other}}

  # ---------------------------------------------------------------------------------------
  # audit

  @doc """
  Audit entries, newest first: `%{at: unix_ms, variable, session, permission, allowed,
  cache_hit}`. Filters: `session:`, `variable:`, `permission:`, `allowed:`, `since:` and
  `until:` (Unix ms), `limit:` (default 100).

  `caller:` names the session asking: it sees only its own decisions and the decisions on
  its own variables (those it owns), never another session's requests on a third
  session's variables. Code that passes no `caller:` is trusted and sees every entry.
  Sessions compare exactly: `:bob` and `"bob"` are different sessions.
  """
  @spec audit(keyword()) :: {:ok, [map()]} | {:error, term()}
  def audit(filters \\ []) do
    spec = %{
      session: &Options.id?/1,
      variable: &match?({_, _}, &1),
      permission: &(&1 in @permissions),
      allowed: &is_boolean/1,
      since: &is_integer/1,
      until: &is_integer/1,
      limit: &Options.pos_integer?/1,
      caller: &Options.id?/1
    }

    with {:ok, f} <- Options.take(filters, spec) do
      entries =
        @audit
        |> :ets.tab2list()
        |> Enum.reverse()
        |> Stream.map(&elem(&1, 1))
        |> Stream.filter(&audit_match?(&1, f))
        |> Enum.take(Map.get(f, :limit, 100))

      {:ok, entries}
    end
  end

  defp audit_match?(e, f) do
    Enum.all?(f, fn
      {:caller, c} -> e.session === c or elem(e.variable, 0) === c
      {:session, s} -> e.session === s
      {:variable, v} -> e.variable === v
      {:permission, p} -> e.permission == p
      {:allowed, a} -> e.allowed == a
      {:since, t} -> e.at >= t
      {:until, t} -> e.at <= t
      {:limit, _} -> true
    end)
  end

  @doc false
  def audit_table, do: @audit

  defp record(variable, session, permission, allowed, hit, nanos, observed) do
    if observed do
      m = %{duration_us: div(nanos, 1_000), cache_hit: hit}
      meta = %{variable: variable, session_id: session, permission: permission, allowed: allowed}
      Events.emit([:dspex, :bridge, :access, :decision], m, meta)
      unless allowed, do: Events.emit([:dspex, :bridge, :access, :denied], m, meta)
    end

    case audit_mode() do
      :all -> log(variable, session, permission, allowed, hit)
      :denials when not allowed -> log(variable, session, permission, allowed, hit)
      _ -> :ok
    end
  end

  defp log(variable, session, permission, allowed, hit) do
    entry = %{
      at: System.system_time(:millisecond),
      variable: variable,
      session: session,
      permission: permission,
      allowed: allowed,
      cache_hit: hit
    }

    :ets.insert(@audit, {System.unique_integer([:monotonic]), entry})
    trim(Application.get_env(:dspex_bridge, :access_audit_size, 10_000))
  end

  defp trim(limit) do
    if :ets.info(@audit, :size) > limit do
      case :ets.first(@audit) do
        :"$end_of_table" ->
          :ok

        key ->
          :ets.delete(@audit, key)
          trim(limit)
      end
    end

    :ok
  end

  # ---------------------------------------------------------------------------------------

  # The error for a request that is_request/5 refused (`:ok` for one it accepts).
  defp check_request({owner, name}, session_id, permission, context)
       when is_id(owner) and is_id(name) and is_id(session_id) do
    cond do
      permission not in @permissions -> {:error, {:invalid_permission, permission}}
      not is_map(context) -> {:error, {:invalid_context, context}}
      true -> :ok
    end
  end

  defp check_request({_, _} = variable, session_id, _p, _c) when is_id(session_id),
    do: {:error, {:invalid_variable, variable}}

  defp check_request({_, _}, session_id, _p, _c), do: {:error, {:invalid_session_id, session_id}}
  defp check_request(variable, _s, _p, _c), do: {:error, {:invalid_variable, variable}}

  defp now, do: System.system_time(:millisecond)
end
