defmodule DSPex.Bridge.AsDependencyTest do
  @moduledoc """
  An Elixir developer adds `{:dspex_bridge, path: ...}` to a fresh Mix project: it must
  compile (building the NIF through the project's own Mix compiler, no hex) and the NIF
  must load and answer.
  """
  use ExUnit.Case, async: true

  @moduletag timeout: 300_000

  test "a throwaway Mix project depending on dspex_bridge compiles and calls a NIF" do
    root = Path.expand("../../..", __DIR__)
    app = Path.join(System.tmp_dir!(), "dspex_consumer_#{System.unique_integer([:positive])}")
    File.mkdir_p!(Path.join(app, "lib"))
    on_exit(fn -> File.rm_rf!(app) end)

    File.write!(Path.join(app, "mix.exs"), """
    defmodule Consumer.MixProject do
      use Mix.Project

      def project do
        [app: :consumer, version: "0.0.1", deps: [{:dspex_bridge, path: #{inspect(root)}}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    script = """
    alias DSPex.Bridge.SessionStore
    {:ok, _} = SessionStore.create_session("consumer")
    {:ok, _} = SessionStore.register_variable("consumer", :x, :integer, 41)
    {:ok, bin} = SessionStore.export_session("consumer")
    {:ok, "copy"} = SessionStore.import_session(bin, session_id: "copy")
    {:ok, v} = SessionStore.get_value("copy", :x)
    IO.puts("NIF_ROUND_TRIP=" <> Integer.to_string(v + 1))
    """

    {output, status} =
      System.cmd("mix", ["run", "-e", script],
        cd: app,
        env: [{"MIX_ENV", "dev"}, {"MIX_BUILD_PATH", nil}, {"MIX_DEPS_PATH", nil}],
        stderr_to_stdout: true
      )

    assert status == 0, output
    assert output =~ "NIF_ROUND_TRIP=42", output
    assert File.exists?(Path.join(app, "_build/dev/lib/dspex_bridge/priv/native/dspex_nif.so"))
  end
end
