defmodule DSPex.Bridge.Analytics.HTTPExporter do
  @moduledoc """
  `/metrics` over HTTP for Prometheus, on OTP's `:inets` httpd (no dependencies).

  Off by default. Start it from config (`config :dspex_bridge, :metrics_http, port: 9568`)
  or by hand:

      {:ok, pid, port} = DSPex.Bridge.Analytics.HTTPExporter.start(port: 0)
      # then: curl http://127.0.0.1:PORT/metrics

  It listens on the loopback interface unless `ip:` says otherwise (a tuple such as
  `{0, 0, 0, 0}`); `port: 0` picks a free port. Any other path answers 404.
  """

  require Record
  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @doc """
  Starts a listener: `{:ok, pid, port}`. Options: `port:` (default 9568), `ip:` (default
  `{127, 0, 0, 1}`).
  """
  @spec start(keyword()) :: {:ok, pid(), :inet.port_number()} | {:error, term()}
  def start(opts \\ []) do
    port = Keyword.get(opts, :port, 9568)
    ip = Keyword.get(opts, :ip, {127, 0, 0, 1})
    root = String.to_charlist(System.tmp_dir!())

    with {:ok, _} <- Application.ensure_all_started(:inets),
         {:ok, pid} <-
           :inets.start(:httpd,
             port: port,
             bind_address: ip,
             server_name: ~c"dspex_metrics",
             server_root: root,
             document_root: root,
             modules: [__MODULE__]
           ) do
      {:ok, pid, Keyword.fetch!(:httpd.info(pid), :port)}
    end
  end

  @doc "Stops a listener started by `start/1`."
  @spec stop(pid()) :: :ok | {:error, term()}
  def stop(pid), do: :inets.stop(:httpd, pid)

  @doc false
  # The httpd callback.
  def unquote(:do)(request) do
    case {mod(request, :method), path(mod(request, :request_uri))} do
      {~c"GET", ~c"/metrics"} ->
        {:ok, body} = DSPex.Bridge.Analytics.export_metrics(:prometheus, :last_minute)

        head = [
          code: 200,
          content_type: ~c"text/plain; version=0.0.4; charset=utf-8",
          content_length: Integer.to_charlist(byte_size(body))
        ]

        {:proceed, [response: {:response, head, [body]}]}

      _ ->
        {:proceed, [response: {404, ~c"not found"}]}
    end
  end

  defp path(uri), do: uri |> :string.split(~c"?") |> hd()
end
