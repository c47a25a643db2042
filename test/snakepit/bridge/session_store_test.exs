defmodule Snakepit.Bridge.SessionStoreTest do
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.{SessionStore, Variable}

  setup do
    id = "store-test-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(id)
    on_exit(fn -> SessionStore.delete_session(id) end)
    %{sid: id}
  end

  describe "sessions" do
    test "create, get, list, exist, delete" do
      id = "lifecycle-#{System.unique_integer([:positive])}"
      assert {:ok, info} = SessionStore.create_session(id, metadata: %{owner: "test"}, ttl: 60)
      assert %{id: ^id, metadata: %{"owner" => "test"}, ttl_ms: 60_000, variable_count: 0} = info
      assert %DateTime{} = info.created_at
      assert {:error, {:already_exists, ^id}} = SessionStore.create_session(id)
      assert SessionStore.session_exists?(id)
      assert id in SessionStore.list_sessions()
      assert {:ok, %{id: ^id}} = SessionStore.get_session(id)
      assert :ok = SessionStore.touch_session(id)
      assert :ok = SessionStore.delete_session(id)
      assert :ok = SessionStore.delete_session(id)
      refute SessionStore.session_exists?(id)
      assert {:error, :not_found} = SessionStore.get_session(id)
      assert {:error, :not_found} = SessionStore.touch_session(id)
    end

    test "session ids are validated" do
      assert {:error, {:invalid_argument, msg}} = SessionStore.create_session("")
      assert msg =~ "must not be empty"

      assert {:error, {:invalid_argument, msg}} =
               SessionStore.create_session(String.duplicate("x", 257))

      assert msg =~ "limit is 256"
      assert {:error, {:invalid_argument, _}} = SessionStore.create_session("a\nb")

      assert_raise ArgumentError, ~r/session_id must be a string/, fn ->
        SessionStore.create_session(:atom)
      end

      assert_raise ArgumentError, ~r/:ttl option/, fn ->
        SessionStore.create_session("x", ttl: 0)
      end
    end

    test "an idle session expires after its ttl" do
      id = "expiring-#{System.unique_integer([:positive])}"
      {:ok, _} = SessionStore.create_session(id, ttl: 0.05)
      assert SessionStore.session_exists?(id)
      Process.sleep(120)
      refute SessionStore.session_exists?(id)
      assert {:error, :not_found} = SessionStore.get_session(id)
    end
  end

  describe "register and read" do
    test "every type, with its normalised value", %{sid: sid} do
      cases = [
        {:float, 1, 1.0},
        {:float, :infinity, :infinity},
        {:float, :nan, :nan},
        {:integer, 3.0, 3},
        {:string, :hello, "hello"},
        {:boolean, true, true},
        {:choice, "beam", "beam"},
        {:module, MyApp.Strategy, "Elixir.MyApp.Strategy"},
        {:embedding, [1, 2.5], [1.0, 2.5]},
        {:tensor, %{"shape" => [2, 2], "data" => [[1, 2], [3, 4]]},
         %{shape: [2, 2], data: [1.0, 2.0, 3.0, 4.0]}}
      ]

      for {{type, input, expected}, i} <- Enum.with_index(cases) do
        name = "v#{i}"
        assert {:ok, "var_" <> _ = id} = SessionStore.register_variable(sid, name, type, input)

        assert {:ok,
                %Variable{
                  id: ^id,
                  name: ^name,
                  type: ^type,
                  value: ^expected,
                  version: 1,
                  source: :elixir
                }} = SessionStore.get_variable(sid, id)

        assert SessionStore.get_variable_value(sid, name) == expected
      end
    end

    test "names may be atoms, types strings; description goes to metadata", %{sid: sid} do
      assert {:ok, _} =
               SessionStore.register_variable(sid, :temp, "float", 0.5,
                 constraints: %{min: 0.0, max: 1.0},
                 metadata: %{unit: "C"},
                 description: "sampling temperature"
               )

      assert {:ok, var} = SessionStore.get_variable(sid, "temp")
      assert var.constraints == %{min: 0.0, max: 1.0}
      assert var.metadata == %{"unit" => "C", "description" => "sampling temperature"}
      assert SessionStore.has_variable?(sid, :temp)
      refute SessionStore.has_variable?(sid, :other)
      refute SessionStore.has_variable?("no-such-session", :temp)
    end

    test "refused registrations change nothing", %{sid: sid} do
      assert {:error, {:invalid_value, msg}} =
               SessionStore.register_variable(sid, :t, :float, 3.0, constraints: %{max: 2.0})

      assert msg =~ "value 3.0 is above maximum 2.0"

      assert {:error, {:invalid_constraints, msg}} =
               SessionStore.register_variable(sid, :t, :float, 1.0, constraints: %{min: 2, max: 1})

      assert msg =~ "greater than max"

      assert {:error, {:invalid_constraints, msg}} =
               SessionStore.register_variable(sid, :s, :string, "a", constraints: %{pattern: "(["})

      assert msg =~ "not a valid regular expression"
      assert {:error, {:invalid_type, msg}} = SessionStore.register_variable(sid, :t, :decimal, 1)
      assert msg =~ "unknown variable type"
      assert {:error, {:invalid_value, _}} = SessionStore.register_variable(sid, :t, :string, nil)

      assert {:error, {:invalid_value, msg}} =
               SessionStore.register_variable(sid, :t, :integer, 3.5)

      assert msg =~ "not a whole number"

      assert {:error, {:invalid_value, msg}} =
               SessionStore.register_variable(sid, :t, :integer, 2 ** 64)

      assert msg =~ "64-bit range"

      assert {:error, {:invalid_value, _}} =
               SessionStore.register_variable(sid, :t, :string, {:a, :tuple})

      assert {:ok, %{variable_count: 0}} = SessionStore.get_session(sid)

      {:ok, _} = SessionStore.register_variable(sid, :t, :float, 1.0)

      assert {:error, {:already_exists, "t"}} =
               SessionStore.register_variable(sid, :t, :float, 1.0)
    end

    test "missing session and variable", %{sid: sid} do
      assert {:error, {:session_not_found, "nope"}} = SessionStore.get_variable("nope", :x)
      assert {:error, :not_found} = SessionStore.get_variable(sid, :x)
      assert SessionStore.get_variable_value(sid, :x, :fallback) == :fallback
      assert SessionStore.get_variable_value("nope", :x) == nil
    end
  end

  describe "update" do
    setup %{sid: sid} do
      {:ok, _} =
        SessionStore.register_variable(sid, :temp, :float, 0.5, constraints: %{min: 0.0, max: 1.0})

      :ok
    end

    test "bumps the version, records source and merges metadata", %{sid: sid} do
      assert :ok = SessionStore.update_variable(sid, :temp, 0.7, %{reason: "tune"})
      assert {:ok, 3} = SessionStore.put_variable(sid, "temp", 0.8)

      assert {:ok,
              %Variable{value: 0.8, version: 3, source: :elixir, metadata: %{"reason" => "tune"}}} =
               SessionStore.get_variable(sid, :temp)
    end

    test "a refused update changes nothing", %{sid: sid} do
      assert {:error, {:invalid_value, msg}} = SessionStore.update_variable(sid, :temp, 1.5)
      assert msg == ~s(variable "temp": value 1.5 is above maximum 1.0)
      assert {:error, {:invalid_value, _}} = SessionStore.update_variable(sid, :temp, "hot")
      assert {:ok, %Variable{value: 0.5, version: 1}} = SessionStore.get_variable(sid, :temp)
    end

    test "optimistic locking with expected_version", %{sid: sid} do
      assert :ok = SessionStore.update_variable(sid, :temp, 0.6, %{}, expected_version: 1)

      assert {:error, {:version_conflict, 2}} =
               SessionStore.update_variable(sid, :temp, 0.7, %{}, expected_version: 1)

      assert SessionStore.get_variable_value(sid, :temp) == 0.6
    end

    test "wrong term shapes raise ArgumentError naming the argument", %{sid: sid} do
      assert_raise ArgumentError, ~r/identifier must be a string or an atom/, fn ->
        SessionStore.update_variable(sid, 42, 1.0)
      end

      assert_raise ArgumentError, ~r/metadata must be a map/, fn ->
        SessionStore.update_variable(sid, :temp, 1.0, [1])
      end

      assert_raise ArgumentError, ~r/:expected_version/, fn ->
        SessionStore.update_variable(sid, :temp, 1.0, %{}, expected_version: -1)
      end

      assert_raise ArgumentError, ~r/session_id must be a string/, fn ->
        SessionStore.get_variable(nil, :temp)
      end

      assert_raise ArgumentError, ~r/:constraints option must be a map/, fn ->
        SessionStore.register_variable(sid, :x, :float, 1.0, constraints: [min: 1])
      end
    end
  end

  describe "batches" do
    setup %{sid: sid} do
      for name <- [:a, :b, :c] do
        {:ok, _} =
          SessionStore.register_variable(sid, name, :integer, 0, constraints: %{min: 0, max: 10})
      end

      :ok
    end

    test "get_variables returns found and missing, keyed as asked", %{sid: sid} do
      assert {:ok, %{found: found, missing: ["zzz"]}} =
               SessionStore.get_variables(sid, [:a, "b", "zzz"])

      assert %{"b" => %Variable{name: "b"}, a: %Variable{name: "a"}} = found
    end

    test "atomic update applies all or nothing, naming every bad key", %{sid: sid} do
      assert {:error, {:batch_failed, errors}} =
               SessionStore.update_variables(sid, %{a: 1, b: 99, zzz: 1}, atomic: true)

      assert %{b: {:invalid_value, _}, zzz: :not_found} = errors
      refute Map.has_key?(errors, :a)
      assert SessionStore.get_variable_value(sid, :a) == 0

      assert {:ok, %{a: {:ok, 2}, b: {:ok, 2}}} =
               SessionStore.update_variables(sid, [a: 1, b: 2], atomic: true)
    end

    test "non-atomic update applies what is valid", %{sid: sid} do
      assert {:ok, results} =
               SessionStore.update_variables(sid, %{a: 5, b: -1}, metadata: %{step: 1})

      assert %{a: {:ok, 2}, b: {:error, {:invalid_value, msg}}} = results
      assert msg =~ "below minimum 0"

      assert {:ok, %Variable{value: 5, metadata: %{"step" => "1"}}} =
               SessionStore.get_variable(sid, :a)

      assert SessionStore.get_variable_value(sid, :b) == 0
    end

    test "bad shapes raise", %{sid: sid} do
      assert_raise ArgumentError, ~r/updates must be/, fn ->
        SessionStore.update_variables(sid, :nope)
      end

      assert_raise ArgumentError, ~r/:atomic option/, fn ->
        SessionStore.update_variables(sid, %{a: 1}, atomic: :yes)
      end
    end
  end

  describe "list and delete" do
    test "list by glob, sorted; delete frees the name but not the id", %{sid: sid} do
      for name <- ["temp_b", "temp_a", "other"],
          do: {:ok, _} = SessionStore.register_variable(sid, name, :float, 0.0)

      assert {:ok, vars} = SessionStore.list_variables(sid, "temp_*")
      assert Enum.map(vars, & &1.name) == ["temp_a", "temp_b"]
      assert {:ok, all} = SessionStore.list_variables(sid)
      assert length(all) == 3

      {:ok, %Variable{id: old_id}} = SessionStore.get_variable(sid, "other")
      assert :ok = SessionStore.delete_variable(sid, old_id)
      assert {:error, :not_found} = SessionStore.delete_variable(sid, "other")
      assert {:ok, new_id} = SessionStore.register_variable(sid, "other", :float, 1.0)
      assert new_id != old_id
    end
  end

  describe "big values and batches (dirty schedulers)" do
    test "a large embedding and a large tensor round trip", %{sid: sid} do
      big = Enum.map(1..50_000, &(&1 / 2))

      assert {:ok, _} =
               SessionStore.register_variable(sid, :emb, :embedding, big,
                 constraints: %{dimensions: 50_000}
               )

      assert SessionStore.get_variable_value(sid, :emb) == big
      assert {:ok, %{value: ^big, version: 1}} = SessionStore.get_variable(sid, :emb)
      bigger = Enum.map(big, &(&1 + 1))
      assert :ok = SessionStore.update_variable(sid, :emb, bigger)
      assert {:ok, %{found: %{emb: %{value: ^bigger}}}} = SessionStore.get_variables(sid, [:emb])

      rows = for r <- 1..200, do: for(c <- 1..100, do: r * c * 1.0)

      assert {:ok, _} =
               SessionStore.register_variable(sid, :t, :tensor, %{shape: [200, 100], data: rows})

      assert %{shape: [200, 100], data: data} = SessionStore.get_variable_value(sid, :t)
      assert data == List.flatten(rows)
    end

    test "a large batch applies", %{sid: sid} do
      names = for i <- 1..500, do: "n#{i}"
      for n <- names, do: {:ok, _} = SessionStore.register_variable(sid, n, :integer, 0)

      assert {:ok, results} =
               SessionStore.update_variables(sid, Map.new(names, &{&1, 7}), atomic: true)

      assert map_size(results) == 500 and Enum.all?(results, fn {_, r} -> r == {:ok, 2} end)
      assert {:ok, %{found: found, missing: []}} = SessionStore.get_variables(sid, names)
      assert map_size(found) == 500
    end
  end
end
