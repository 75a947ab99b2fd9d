defmodule DSPex.Bridge.HAManager.Routed do
  @moduledoc false
  # `defrouted name(session_id, ...)` defines the public `name/n` as "this node's answer
  # (`local_name/n`), or the owner's when this node does not hold the session": the one
  # shape every session-scoped call of SessionStore and DependencyManager has. The first
  # argument is the session id; defaults (`opts \\ []`) are allowed.

  defmacro defrouted({name, _meta, args} = head) do
    vars =
      Enum.map(args, fn
        {:\\, _, [var, _default]} -> var
        var -> var
      end)

    [session | _] = vars
    local = :"local_#{name}"

    quote do
      def unquote(head),
        do:
          DSPex.Bridge.HAManager.Router.routed(
            unquote(local)(unquote_splicing(vars)),
            __MODULE__,
            unquote(session),
            unquote(name),
            unquote(vars)
          )
    end
  end
end
