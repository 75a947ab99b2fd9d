[
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,examples,benches}/**/*.{ex,exs}"],
  line_length: 100,
  locals_without_parens: [defrouted: 1]
]
