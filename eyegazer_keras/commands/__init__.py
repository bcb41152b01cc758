"""The `eyegazer` verbs, one module per family; `eyegazer_keras.cli` registers and runs them.

Each module lists its verbs in `VERBS` (`common.Verb`: name, help, `run(args) -> int`,
`arguments(parser)`) and imports the library lazily, inside `run`, so `eyegazer --help` and
`eyegazer predict` never load keras-hub (or TensorFlow, for `--help`).
"""
