defmodule DSPex.Bridge.AsDependencyTest do
  @moduledoc """
  An Elixir developer adds `{:dspex_bridge, path: ...}` to a fresh Mix project: it must
  compile (building the NIF through the project's own Mix compiler, no hex), the NIF
  must load and answer, and `mix dspex.demo` must run from there.
  """
  use ExUnit.Case, async: true

  @moduletag timeout: 300_000

  # A new project that depends on dspex_bridge by path; removed when the test ends.
  defp consumer! do
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

    app
  end

  defp mix_env(extra \\ []),
    do: [{"MIX_ENV", "dev"}, {"MIX_BUILD_PATH", nil}, {"MIX_DEPS_PATH", nil}] ++ extra

  test "a throwaway Mix project depending on dspex_bridge compiles and calls a NIF" do
    app = consumer!()

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
        env: mix_env(),
        stderr_to_stdout: true
      )

    assert status == 0, output
    assert output =~ "NIF_ROUND_TRIP=42", output
    assert File.exists?(Path.join(app, "_build/dev/lib/dspex_bridge/priv/native/dspex_nif.so"))
  end

  test "mix dspex.demo runs from it: the demo ships in the package's priv/" do
    app = consumer!()

    python =
      Application.get_env(:dspex_bridge, :python) || System.get_env("DSPEX_PYTHON") || "python3"

    {output, status} =
      System.cmd("mix", ["dspex.demo"],
        cd: app,
        env: mix_env([{"DSPEX_PYTHON", python}]),
        stderr_to_stdout: true
      )

    assert status == 0, output
    assert output =~ "A remote Python worker dials in over gRPC", output
    assert output =~ "== Done", output
  end
end
