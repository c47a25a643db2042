# `mix format --check-formatted` runs in scripts/test.sh.
[
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,bench,examples}/**/*.{ex,exs}"]
]
