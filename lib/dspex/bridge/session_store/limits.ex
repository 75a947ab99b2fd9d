defmodule DSPex.Bridge.SessionStore.Limits do
  @moduledoc false
  # The bounds of a session's settings and contents, shared by create_session/2 and by the
  # import of a snapshot, so that a snapshot is held to exactly what the calls that would
  # have built it accept.

  alias DSPex.Bridge.Options

  @max_history 10_000
  @max_variables 10_000_000
  # Versions are integers that fit in 63 bits (what a protobuf int64 or a Python int
  # crosses the bridge as).
  @max_version 9_223_372_036_854_775_807

  def max_history, do: @max_history
  def max_variables, do: @max_variables
  def max_version, do: @max_version

  # The idle check runs every ttl/4 ms on a VM timer.
  def ttl?(ttl), do: ttl == :infinity or Options.pos_ms?(ttl)
  def history_limit?(h), do: Options.int_in?(h, 1, @max_history)
  def max_variables?(m), do: Options.int_in?(m, 1, @max_variables)
  def version?(v), do: Options.int_in?(v, 1, @max_version)
end
