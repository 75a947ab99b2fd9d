# The Python workers run in the environment `make python` (mix dspex.python.setup) makes,
# unless DSPEX_PYTHON names another interpreter.
venv = Path.expand("_build/dspex_python/bin/python")

if System.get_env("DSPEX_PYTHON") == nil and File.exists?(venv),
  do: Application.put_env(:dspex_bridge, :python, venv)

ExUnit.start(capture_log: true)
