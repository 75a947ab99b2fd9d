[
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,examples,benches}/**/*.{ex,exs}"],
  line_length: 100
]
