defmodule DSPex.Bridge.Native do
  @moduledoc false
  # The one module of NIF stubs. Only the feature modules call it; each stub's contract is
  # documented on the Rust side (native/dspex_nif/src/<feature>.rs). A stub that runs means
  # the library failed to load, which `@on_load` already reported.

  @on_load :load_nif

  @doc false
  def load_nif do
    path = :filename.join(:code.priv_dir(:dspex_bridge), ~c"native/dspex_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :ok

      {:error, {reason, text}} ->
        require Logger
        Logger.error("dspex_bridge: could not load its NIF from #{path}: #{reason} #{text}")
        :abort
    end
  end

  defp not_loaded, do: :erlang.nif_error(:dspex_nif_not_loaded)

  # snapshot
  def snapshot_encode(_payload), do: not_loaded()
  def snapshot_encode_dirty(_payload), do: not_loaded()
  def snapshot_decode(_frame), do: not_loaded()
  def snapshot_decode_dirty(_frame), do: not_loaded()
  def snapshot_dirty_threshold, do: not_loaded()

  # the session's core (session.rs) and its graph (graph.rs)
  def session_new, do: not_loaded()
  def session_apply(_core, _command, _now_ms), do: not_loaded()
  def session_load(_core, _variables, _edges), do: not_loaded()
  def session_info(_core), do: not_loaded()
  def session_version(_core, _name), do: not_loaded()
  def graph_add_edges(_graph, _edges), do: not_loaded()
  def graph_add_edge_direct(_graph, _from, _to, _kind), do: not_loaded()
  def graph_add_edges_direct(_graph, _edges), do: not_loaded()
  def graph_route_writes(_graph, _on), do: not_loaded()
  def graph_neighbours(_graph, _key, _which), do: not_loaded()
  def graph_update_order(_graph, _changed), do: not_loaded()
  def graph_cycle_path(_graph, _from, _to), do: not_loaded()
  def graph_edges(_graph), do: not_loaded()
  def graph_to_dot(_graph), do: not_loaded()
  def graph_size(_graph), do: not_loaded()
  def graph_live_count, do: not_loaded()
  def graph_publish(_session, _graph), do: not_loaded()
  def graph_unpublish(_session), do: not_loaded()
  def graph_of(_session), do: not_loaded()
  def graph_add_edge_in(_session, _from, _to, _kind), do: not_loaded()

  # acl
  def acl_validate(_rules), do: not_loaded()
  def acl_set_policy(_session, _name, _mode, _rules), do: not_loaded()
  def acl_set_policies(_session, _policies), do: not_loaded()
  def acl_remove_policy(_session, _name), do: not_loaded()
  def acl_remove_session(_session), do: not_loaded()
  def acl_add_rule(_session, _name, _rule), do: not_loaded()
  def acl_remove_rule(_session, _name, _id), do: not_loaded()
  def acl_set_mode(_session, _name, _mode), do: not_loaded()
  def acl_policy(_session, _name), do: not_loaded()
  def acl_session_policies(_session), do: not_loaded()
  def acl_check(_session, _name, _caller, _permission, _context), do: not_loaded()
  def acl_set_audit_all(_all?), do: not_loaded()
  def events_set_enabled(_enabled?), do: not_loaded()
  def acl_take_counts, do: not_loaded()
  def acl_explain(_session, _name, _caller, _permission, _context), do: not_loaded()
  def acl_permissions(_session, _name, _caller, _context, _now), do: not_loaded()
  def acl_stats, do: not_loaded()

  # analytics
  def analytics_init(_max_metrics, _max_series, _key_cache), do: not_loaded()
  def analytics_record(_kind, _name, _value, _labels), do: not_loaded()
  def analytics_summary(_engine, _metrics, _filter, _range, _now), do: not_loaded()

  def analytics_time_series(_engine, _metric, _filter, _start, _end, _step, _now),
    do: not_loaded()

  def analytics_export(_engine, _format, _range, _now, _prefix), do: not_loaded()
  def analytics_metrics(_engine), do: not_loaded()
  def analytics_snapshot(_engine, _now), do: not_loaded()
  def analytics_merge(_frames), do: not_loaded()
  def analytics_clear(_engine), do: not_loaded()
  def analytics_limits, do: not_loaded()
  def analytics_memory, do: not_loaded()
  def analytics_put_alert(_engine, _rule), do: not_loaded()
  def analytics_remove_alert(_engine, _name), do: not_loaded()
  def analytics_alerts(_engine), do: not_loaded()
  def analytics_evaluate_alerts(_engine, _now), do: not_loaded()

  # high availability
  def ha_table_new(_node), do: not_loaded()
  def ha_apply(_table, _key, _op), do: not_loaded()
  def ha_info(_table, _key), do: not_loaded()
  def ha_forget(_table, _key), do: not_loaded()
  def ha_rank(_key, _nodes), do: not_loaded()
  def ha_envelope_encode(_key, _epoch, _frame, _locks), do: not_loaded()
  def ha_envelope_decode(_bytes), do: not_loaded()

  # breaker
  def breaker_new(_config), do: not_loaded()
  def breaker_allow(_breaker), do: not_loaded()
  def breaker_record(_breaker, _generation, _probe, _outcome, _duration_ns), do: not_loaded()
  def breaker_state(_breaker), do: not_loaded()
  def breaker_control(_breaker, _action), do: not_loaded()
  def breaker_stats(_breaker), do: not_loaded()

  # bridge protocol (priv/proto/dspex_bridge.proto)
  def bridge_encode(_frame), do: not_loaded()
  def bridge_encode_dirty(_frame), do: not_loaded()
  def bridge_decode(_bytes), do: not_loaded()
  def bridge_decode_dirty(_bytes), do: not_loaded()

  # redis_client
  def redis_connect(_url, _opts, _pid, _ref), do: not_loaded()
  def redis_command(_conn, _commands, _atomic, _pid, _ref), do: not_loaded()
  def redis_cancel(_pending), do: not_loaded()
  def redis_subscriber(_url, _opts, _owner, _ref), do: not_loaded()
  def redis_subscribe(_sub, _channels, _subscribe, _pid, _ref), do: not_loaded()
  def redis_subscriber_close(_sub), do: not_loaded()

  # grpc_server
  def grpc_listen(_host, _port, _listener, _max_frame), do: not_loaded()
  def grpc_stop(_server), do: not_loaded()
  def grpc_set_owner(_conn, _pid), do: not_loaded()
  def grpc_send(_conn, _frame), do: not_loaded()
  def grpc_close(_conn, _code, _message), do: not_loaded()

  # rate limit
  def rate_limiter_new(_capacity, _per_second, _max_keys), do: not_loaded()
  def rate_limiter_take(_limiter, _key), do: not_loaded()

  # coordinator
  def coordinator_new, do: not_loaded()

  # These two work on the coordinator made last by coordinator_new/0 (no handle to decode).
  def coordinator_acquire(_s, _v, _o, _pid, _prio, _conflict, _timeout, _grace, _lease),
    do: not_loaded()

  def coordinator_release(_s, _v, _o), do: not_loaded()
  def coordinator_renew(_c, _s, _v, _o, _lease), do: not_loaded()
  def coordinator_cancel(_c, _s, _v, _ticket), do: not_loaded()
  def coordinator_force_release(_c, _s, _v), do: not_loaded()
  def coordinator_check_write(_c, _s, _v, _token), do: not_loaded()
  def coordinator_info(_c, _s, _v), do: not_loaded()
  def coordinator_held_in(_c, _s), do: not_loaded()
  def coordinator_hand_over(_c, _s, _v), do: not_loaded()
  def coordinator_adopt(_c, _s, _v, _o, _token, _lease_ms, _holder), do: not_loaded()
  def coordinator_tick(_c), do: not_loaded()
  def coordinator_listen(_c), do: not_loaded()
end
