defmodule Snakepit.Bridge.SecurityTest do
  # Tokens, TLS and exposure rules of the BEAM-hosted server, from real Python
  # clients (test/support/python/auth_probe.py: raw stubs, no client library),
  # and the server's logs in Logger. Not async: listeners, OS processes, and
  # one global :logger handler per test.
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.{Server, SessionStore}
  alias Snakepit.Test.Python

  @moduletag timeout: 120_000

  # Every BridgeService method auth_probe.py `calls` makes.
  @methods ~w(Ping InitializeSession RegisterVariable GetSession Heartbeat GetVariable
              GetVariables ListVariables SetVariable SetVariables WatchVariables
              DeleteVariable CleanupSession)

  # Forwards :logger events to the test process that added it.
  defmodule Forward do
    @moduledoc false
    def log(event, %{config: %{pid: pid}}), do: send(pid, {:logged, event})
  end

  defp unique(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"

  defp start_server(opts \\ []) do
    start_supervised!({Server, Keyword.merge([host: "127.0.0.1", port: 0], opts)})
    "127.0.0.1:#{Server.port()}"
  end

  # Runs auth_probe.py and decodes its JSON line.
  defp probe(address, args) do
    {out, status} =
      System.cmd(Python.python(), [Python.script("auth_probe.py"), address | args],
        env: Python.env(),
        stderr_to_stdout: true
      )

    line = out |> String.split("\n", trim: true) |> List.last()

    case {status, line && Python.json_decode(line)} do
      {0, {:ok, map}} -> map
      _ -> raise "auth_probe.py #{Enum.join(args, " ")} exited #{status}:\n#{out}"
    end
  end

  defp every(code), do: Map.new(@methods, &{&1, code})

  defp tmp_dir do
    dir = Path.join(System.tmp_dir!(), unique("snakepit-security"))
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  defp capture_logger_events do
    id = :"snakepit_security_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, Forward, %{config: %{pid: self()}})
    on_exit(fn -> :logger.remove_handler(id) end)
  end

  describe "tokens" do
    test "an embedded server generates a random 64-hex-character token" do
      start_server()
      start_supervised!({Server, name: :security_second, host: "127.0.0.1", port: 0})

      assert Server.token() =~ ~r/\A[0-9a-f]{64}\z/
      assert Server.token(:security_second) =~ ~r/\A[0-9a-f]{64}\z/
      assert Server.token() != Server.token(:security_second)
    end

    test "without a token every BridgeService call is UNAUTHENTICATED; with the server token every one works" do
      address = start_server()
      sid = unique("probe")

      assert probe(address, ["calls", sid]) == every("UNAUTHENTICATED")
      refute SessionStore.session_exists?(sid)

      wrong = String.duplicate("0", 64)
      assert probe(address, ["calls", sid, "--token", wrong]) == every("UNAUTHENTICATED")

      assert probe(address, ["calls", sid, "--token", Server.token()]) == every("OK")
    end

    test "a session token allows its own session's calls only" do
      address = start_server()
      {sid, other} = {unique("mine"), unique("other")}
      token = Server.session_token(sid)
      assert token != Server.token()

      # Everything about its session works; Ping is about no session, so it is refused.
      assert probe(address, ["calls", sid, "--token", token]) ==
               Map.put(every("OK"), "Ping", "PERMISSION_DENIED")

      {:ok, _} = SessionStore.create_session(other)
      {:ok, _} = SessionStore.register_variable(other, :probe, :integer, 7)
      on_exit(fn -> SessionStore.delete_session(other) end)

      assert probe(address, ["calls", other, "--token", token]) == every("PERMISSION_DENIED")
      # Nothing was changed in the other session.
      assert {:ok, %{value: 7, version: 1}} = SessionStore.get_variable(other, :probe)

      # worker_env hands out exactly that token, with the address and session.
      assert Server.worker_env(sid) == %{
               "SNAKEPIT_BRIDGE_ADDRESS" => address,
               "SNAKEPIT_BRIDGE_TOKEN" => token,
               "SNAKEPIT_BRIDGE_SESSION" => sid
             }
    end

    test "a session token from one server is refused by another" do
      start_supervised!({Server, name: :security_other, host: "127.0.0.1", port: 0})
      foreign = Server.session_token("shared", :security_other)
      address = start_server()

      assert probe(address, ["calls", "shared", "--token", foreign]) == every("UNAUTHENTICATED")
    end

    test "a token given is the server's; one too short fails the start saying why" do
      token = String.duplicate("k", 40)
      address = start_server(token: token)
      assert Server.token() == token
      assert probe(address, ["ping", "--token", token]) == %{"code" => "OK"}

      Process.flag(:trap_exit, true)

      assert {:error, {:invalid_argument, msg}} =
               Server.start_link(name: :security_short, port: 0, token: "short")

      assert msg =~ "at least 32"

      assert_raise ArgumentError, ~r/auth: false/, fn ->
        Server.start_link(name: :security_both, port: 0, token: token, auth: false)
      end
    end

    test "health answers SERVING without a token" do
      address = start_server()
      assert probe(address, ["health"]) == %{"status" => "SERVING"}
    end

    test "health turns NOT_SERVING when the server stops, then the watch ends" do
      address = start_server()
      watcher = Python.start([Python.script("auth_probe.py"), address, "health-watch"])
      assert Python.json_decode(Python.next_line(watcher)) == {:ok, %{"status" => "SERVING"}}
      :ok = stop_supervised(Server)
      assert Python.json_decode(Python.next_line(watcher)) == {:ok, %{"status" => "NOT_SERVING"}}
      assert Python.json_decode(Python.next_line(watcher)) == {:ok, %{"end" => "UNAVAILABLE"}}
      assert Python.wait_exit(watcher) == 0
    end

    test "reflection lists the bridge service to the server token only" do
      address = start_server()
      sid = unique("reflect")

      assert %{"services" => services} = probe(address, ["reflection", "--token", Server.token()])

      assert "snakepit.bridge.BridgeService" in services
      assert probe(address, ["reflection"]) == %{"code" => "UNAUTHENTICATED"}

      assert probe(address, ["reflection", "--token", Server.session_token(sid)]) ==
               %{"code" => "PERMISSION_DENIED"}
    end

    test "auth: false on loopback serves every call without a token, and has no tokens" do
      address = start_server(auth: false)
      sid = unique("open")

      assert probe(address, ["calls", sid]) == every("OK")
      assert Server.token() == nil

      assert Server.worker_env(sid) == %{
               "SNAKEPIT_BRIDGE_ADDRESS" => address,
               "SNAKEPIT_BRIDGE_SESSION" => sid
             }

      assert_raise ArgumentError, ~r/auth: false/, fn -> Server.session_token(sid) end
    end
  end

  describe "exposure" do
    setup do
      Process.flag(:trap_exit, true)
      :ok
    end

    test "a wildcard bind without TLS fails to start, saying what is missing" do
      assert {:error, {:invalid_argument, msg}} =
               Server.start_link(name: :security_exposed, host: "0.0.0.0", port: 0)

      assert msg =~ "not a loopback address"
      assert msg =~ "without TLS"
      assert msg =~ "allow_insecure"
      refute Process.whereis(:security_exposed)

      assert {:error, {:invalid_argument, msg}} =
               Server.start_link(name: :security_exposed, host: "0.0.0.0", port: 0, auth: false)

      assert msg =~ "without TLS and a token"
      refute Process.whereis(:security_exposed)
    end

    test "allow_insecure starts it; worker_env gives the loopback address" do
      start_supervised!(
        {Server, name: :security_insecure, host: "0.0.0.0", port: 0, allow_insecure: true}
      )

      port = Server.port(:security_insecure)

      assert %{"SNAKEPIT_BRIDGE_ADDRESS" => address} = Server.worker_env("s", :security_insecure)

      assert address == "127.0.0.1:#{port}"
      assert probe(address, ["health"]) == %{"status" => "SERVING"}
    end

    test "a wildcard bind with TLS and a token starts" do
      certs = write_certs!(tmp_dir())

      start_supervised!(
        {Server,
         name: :security_tls_wild,
         host: "0.0.0.0",
         port: 0,
         tls: [cert_file: certs.server_cert, key_file: certs.server_key]}
      )

      address = "127.0.0.1:#{Server.port(:security_tls_wild)}"
      token = Server.token(:security_tls_wild)

      assert probe(address, ["ping", "--token", token, "--root-certs", certs.server_ca]) ==
               %{"code" => "OK"}
    end

    test "bad :tls options raise; an unreadable TLS file fails the start naming it" do
      assert_raise ArgumentError, ~r/:tls option/, fn ->
        Server.start_link(name: :security_bad_tls, port: 0, tls: [cert_file: "a.pem"])
      end

      assert_raise ArgumentError, ~r/unknown :tls option/, fn ->
        Server.start_link(
          name: :security_bad_tls,
          port: 0,
          tls: [cert_file: "a", key_file: "b", ca: "c"]
        )
      end

      missing = Path.join(tmp_dir(), "missing.pem")

      assert {:error, {:invalid_argument, msg}} =
               Server.start_link(
                 name: :security_bad_tls,
                 port: 0,
                 tls: [cert_file: missing, key_file: missing]
               )

      assert msg =~ missing
    end
  end

  describe "TLS" do
    setup do
      %{certs: write_certs!(tmp_dir())}
    end

    test "a client trusting the CA works; a plaintext client does not", %{certs: certs} do
      address = start_server(tls: [cert_file: certs.server_cert, key_file: certs.server_key])
      sid = unique("tls")
      tls = ["--root-certs", certs.server_ca]

      assert probe(address, ["calls", sid, "--token", Server.token() | tls]) == every("OK")
      assert probe(address, ["health" | tls]) == %{"status" => "SERVING"}

      assert %{"code" => "UNAVAILABLE"} = probe(address, ["health"])
      assert probe(address, ["calls", sid, "--token", Server.token()]) == every("UNAVAILABLE")
    end

    test "with client_ca_file, a client without a certificate is refused", %{certs: certs} do
      address =
        start_server(
          tls: [
            cert_file: certs.server_cert,
            key_file: certs.server_key,
            client_ca_file: certs.client_ca
          ]
        )

      tls = ["--root-certs", certs.server_ca]
      assert %{"code" => "UNAVAILABLE"} = probe(address, ["health" | tls])

      client = ["--client-cert", certs.client_cert, "--client-key", certs.client_key]
      assert probe(address, ["health" | tls ++ client]) == %{"status" => "SERVING"}

      assert probe(address, ["ping", "--token", Server.token() | tls ++ client]) ==
               %{"code" => "OK"}
    end
  end

  describe "logs" do
    setup do
      capture_logger_events()
      :ok
    end

    test "a refused call is one warning with domain :snakepit and the peer, never the token" do
      address = start_server()
      wrong = "wrong-token-" <> String.duplicate("w", 40)
      assert probe(address, ["ping", "--token", wrong]) == %{"code" => "UNAUTHENTICATED"}

      # A later, different refusal: once its event is in, every earlier one is.
      session_token = Server.session_token(unique("barrier"))

      assert probe(address, ["ping", "--token", session_token]) == %{
               "code" => "PERMISSION_DENIED"
             }

      events = logged_until(&(message(&1) =~ "session token"))
      assert [event] = Enum.filter(events, &(message(&1) =~ "unauthenticated"))
      assert event.level == :warning
      assert event.meta.domain == [:elixir, :snakepit]
      assert event.meta.peer =~ ~r/\A127\.0\.0\.1:\d+\z/
      assert event.meta.method == "/snakepit.bridge.BridgeService/Ping"

      text = inspect(event, limit: :infinity, printable_limit: :infinity)
      refute text =~ wrong
      refute text =~ Server.token()
      refute text =~ session_token
    end

    test "connection events arrive at debug only when log_level: :debug asks" do
      address = start_server()
      assert probe(address, ["health"]) == %{"status" => "SERVING"}
      assert probe(address, ["ping"]) == %{"code" => "UNAUTHENTICATED"}
      # The refusal comes after the health check's connection opened.
      assert_receive {:logged, %{level: :warning, meta: %{method: _}}}, 10_000
      refute Enum.any?(collect_logged(), &(&1.level == :debug))
      stop_supervised!(Server)

      address = start_server(log_level: :debug)
      assert probe(address, ["health"]) == %{"status" => "SERVING"}
      # (Connections of the first server may still be closing: match this event.)
      assert_receive {:logged, %{level: :debug, msg: {:string, "connection opened"}, meta: meta}},
                     10_000

      assert meta.domain == [:elixir, :snakepit]
      assert meta.peer =~ "127.0.0.1:"
    end

    test "the most recently started server that still runs forwards the logs" do
      start_server()
      first = Process.whereis(Server)

      start_supervised!({Server, name: :security_later, host: "127.0.0.1", port: 0})
      later = Process.whereis(:security_later)
      address = "127.0.0.1:#{Server.port()}"

      assert probe(address, ["ping"]) == %{"code" => "UNAUTHENTICATED"}
      assert_receive {:logged, %{level: :warning, meta: %{pid: ^later, method: _}}}, 10_000

      stop_supervised!(:security_later)
      assert probe(address, ["ping"]) == %{"code" => "UNAUTHENTICATED"}
      assert_receive {:logged, %{level: :warning, meta: %{pid: ^first, method: _}}}, 10_000
    end
  end

  describe "argument checks" do
    test "session_token and worker_env need a session id string" do
      start_server()

      for bad <- [:atom, 1, "", <<0xFF>>] do
        assert_raise ArgumentError, fn -> Server.session_token(bad) end
        assert_raise ArgumentError, fn -> Server.worker_env(bad) end
      end
    end

    test "auth, allow_insecure and log_level are checked" do
      assert_raise ArgumentError, ~r/:auth option/, fn -> Server.start_link(auth: :no) end

      assert_raise ArgumentError, ~r/:allow_insecure option/, fn ->
        Server.start_link(allow_insecure: "yes")
      end

      assert_raise ArgumentError, ~r/:log_level option/, fn ->
        Server.start_link(log_level: :verbose)
      end

      assert_raise ArgumentError, ~r/:token option/, fn -> Server.start_link(token: 42) end
    end
  end

  # The :logger events delivered to this process up to and including the
  # first for which `done?` holds (which must come within 10 s).
  defp logged_until(done?, acc \\ []) do
    receive do
      {:logged, event} ->
        if done?.(event),
          do: Enum.reverse([event | acc]),
          else: logged_until(done?, [event | acc])
    after
      10_000 -> flunk("the expected log event did not come; got: #{inspect(Enum.reverse(acc))}")
    end
  end

  # The :logger events already delivered to this process.
  defp collect_logged(acc \\ []) do
    receive do
      {:logged, event} -> collect_logged([event | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp message(%{msg: {:string, text}}), do: IO.chardata_to_string(text)
  defp message(_), do: ""

  # A server chain (valid for localhost and 127.0.0.1) and a client chain,
  # from OTP's :public_key, as PEM files in `dir`. RSA keys: grpc's BoringSSL
  # refuses the ECDSA signatures pkix_test_data makes.
  defp write_certs!(dir) do
    san =
      {:Extension, {2, 5, 29, 17}, false, [dNSName: ~c"localhost", iPAddress: <<127, 0, 0, 1>>]}

    key = [key: {:rsa, 2048, 65537}, digest: :sha256]

    %{server_config: server, client_config: client} =
      :public_key.pkix_test_data(%{
        server_chain: %{root: key, intermediates: [], peer: [{:extensions, [san]} | key]},
        client_chain: %{root: key, intermediates: [], peer: key}
      })

    write = fn name, entries ->
      path = Path.join(dir, name)
      File.write!(path, :public_key.pem_encode(entries))
      path
    end

    cert = fn der -> {:Certificate, der, :not_encrypted} end
    private = fn {type, der} -> {type, der, :not_encrypted} end

    %{
      server_cert: write.("server.pem", [cert.(server[:cert])]),
      server_key: write.("server.key", [private.(server[:key])]),
      server_ca: write.("server_ca.pem", [cert.(issuer!(server[:cert], client[:cacerts]))]),
      client_cert: write.("client.pem", [cert.(client[:cert])]),
      client_key: write.("client.key", [private.(client[:key])]),
      client_ca: write.("client_ca.pem", [cert.(issuer!(client[:cert], server[:cacerts]))])
    }
  end

  defp issuer!(der, candidates) do
    Enum.find(candidates, &:public_key.pkix_is_issuer(der, &1)) ||
      raise "no issuer of the certificate among the test CAs"
  end
end
