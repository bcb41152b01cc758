"""The `eyegazer` verbs, one module per family; `eyegazer_keras.cli` gathers and runs them.

Each module fills its `VERBS` (`common.Verb`: name, help, `run(args) -> int`,
`arguments(parser)`) with `@verb(name, arguments=...)` and imports the library lazily, inside
`run`, so `eyegazer --help` and `eyegazer predict` never load keras-hub (or TensorFlow, for
`--help`).

| module | verbs |
|---|---|
| `prepare` | prepare (+ `data.preview_grid`) |
| `training` | train, search (+ `load_config`, the `--config`/`--set` options) |
| `run_folder` | evaluate, export, import-peft, export-peft |
| `exported` | predict, app, serve |
| `demo` | demo |
"""
