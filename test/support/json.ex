defmodule Snakepit.Test.JSON do
  @moduledoc """
  A small JSON decoder for what test Python processes print. OTP 25 has no
  `:json` module and Hex packages cannot be fetched, so the tests carry this.
  Objects decode to maps with string keys.
  """

  @doc "Decodes one JSON document; `{:ok, term}` or `:error`."
  def decode(text) do
    case value(skip(text)) do
      {:ok, v, rest} -> if skip(rest) == "", do: {:ok, v}, else: :error
      :error -> :error
    end
  rescue
    _ -> :error
  end

  defp skip(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: skip(rest)
  defp skip(s), do: s

  defp value("null" <> r), do: {:ok, nil, r}
  defp value("true" <> r), do: {:ok, true, r}
  defp value("false" <> r), do: {:ok, false, r}
  defp value("\"" <> r), do: string(r, [])
  defp value("[" <> r), do: list(skip(r), [])
  defp value("{" <> r), do: object(skip(r), %{})
  defp value(s), do: number(s)

  defp list("]" <> r, []), do: {:ok, [], r}

  defp list(s, acc) do
    with {:ok, v, r} <- value(skip(s)) do
      case skip(r) do
        "," <> r -> list(skip(r), [v | acc])
        "]" <> r -> {:ok, Enum.reverse([v | acc]), r}
        _ -> :error
      end
    end
  end

  defp object("}" <> r, acc) when acc == %{}, do: {:ok, acc, r}

  defp object("\"" <> s, acc) do
    with {:ok, k, r} <- string(s, []),
         ":" <> r <- skip(r),
         {:ok, v, r} <- value(skip(r)) do
      case skip(r) do
        "," <> r -> object(skip(r), Map.put(acc, k, v))
        "}" <> r -> {:ok, Map.put(acc, k, v), r}
        _ -> :error
      end
    else
      _ -> :error
    end
  end

  defp object(_, _), do: :error

  defp string("\"" <> r, acc), do: {:ok, acc |> Enum.reverse() |> IO.iodata_to_binary(), r}

  defp string("\\u" <> <<hex::binary-size(4), r::binary>>, acc),
    do: string(r, [<<String.to_integer(hex, 16)::utf8>> | acc])

  defp string("\\" <> <<c, r::binary>>, acc) do
    ch =
      case c do
        ?n -> "\n"
        ?t -> "\t"
        ?r -> "\r"
        ?b -> "\b"
        ?f -> "\f"
        other -> <<other>>
      end

    string(r, [ch | acc])
  end

  defp string(<<c::utf8, r::binary>>, acc), do: string(r, [<<c::utf8>> | acc])
  defp string(_, _), do: :error

  defp number(s) do
    case Regex.run(~r/^-?\d+(\.\d+)?([eE][-+]?\d+)?/, s) do
      [num | _] ->
        rest = binary_part(s, byte_size(num), byte_size(s) - byte_size(num))

        parsed =
          if String.contains?(num, [".", "e", "E"]) do
            {f, ""} = Float.parse(num)
            f
          else
            String.to_integer(num)
          end

        {:ok, parsed, rest}

      nil ->
        :error
    end
  end
end
