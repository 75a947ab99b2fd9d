defmodule DSPex.Bridge.HostProjectTest do
  @moduledoc """
  The library as a user meets it: a new Mix project that depends on dspex_bridge by path
  compiles it (NIF included, through its own Mix compiler) and runs `mix dspex.demo`, whose
  files ship in the package's priv/.
  """
  use ExUnit.Case, async: false

  @moduletag timeout: 600_000

  @tag :tmp_dir
  test "mix dspex.demo runs from a project that depends on dspex_bridge", %{tmp_dir: dir} do
    File.write!(Path.join(dir, "mix.exs"), """
    defmodule HostApp.MixProject do
      use Mix.Project

      def project do
        [app: :host_app, version: "0.1.0", deps: [{:dspex_bridge, path: #{inspect(File.cwd!())}}]]
      end
    end
    """)

    python =
      Application.get_env(:dspex_bridge, :python) || System.get_env("DSPEX_PYTHON") || "python3"

    env = [{"MIX_ENV", "dev"}, {"DSPEX_PYTHON", python}]
    {out, status} = System.cmd("mix", ["dspex.demo"], cd: dir, env: env, stderr_to_stdout: true)
    assert status == 0, out
    assert out =~ "A remote Python worker dials in over gRPC"
    assert out =~ "== Done"
  end
end
