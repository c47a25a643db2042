defmodule Snakepit.Bridge.LoneNodeTest do
  # A node with no other node connected serves every gRPC call itself: the
  # cluster process is not on the path (it is suspended here to prove it).
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.Server
  alias Snakepit.Test.Python

  defp alone?(tries \\ 100) do
    cond do
      Node.list() == [] -> true
      tries == 0 -> false
      true -> Process.sleep(50) && alone?(tries - 1)
    end
  end

  test "InitializeSession and calls about missing sessions do not pass through the cluster process" do
    # Peers of earlier cluster tests may still be stopping.
    assert alone?()
    name = :"lone_server_#{System.unique_integer([:positive])}"
    start_supervised!({Server, name: name, port: 0, auth: false})
    port = Server.port(name)
    sid = "lone-#{System.unique_integer([:positive])}"

    :ok = :sys.suspend(Snakepit.Bridge.Cluster)

    try do
      assert {:ok, %{"initialized" => true}} =
               Python.client(port, sid, "ping_and_initialize", ["hi"])

      assert {:error, %{"code" => "NOT_FOUND"}} =
               Python.client(port, sid <> "-missing", "get_session")
    after
      :sys.resume(Snakepit.Bridge.Cluster)
    end
  end
end
