"""The `tfds` command, able to start without apache-beam and mlcroissant.

Why this exists: the `tfds` command of tensorflow-datasets 4.9.10 cannot start unless two
optional packages, which TFDS does not declare as dependencies, are importable, even for builders
that use neither (ours use neither):

* `apache_beam`: `tensorflow_datasets/scripts/cli/main.py` imports `convert_format.py`, which
  imports `convert_format_utils.py`, which defines `class ConvertMetadataFn(beam.DoFn)` at module
  level (line ~248). `beam` there is an `etils.epy.lazy_imports` module, so that class statement
  imports `apache_beam`: `tfds --help` already dies with
  `ModuleNotFoundError: No module named 'apache_beam'`.
* `mlcroissant`: `main.py` also imports `croissant.py` (the `build_croissant` command), which
  runs `import mlcroissant as mlc` at module level and uses `mlc.Dataset` in an annotation.

Why not install them: apache-beam pins older pillow and protobuf than the versions this project
is pinned to and tested against, so installing it would downgrade them; mlcroissant (1.1.1)
pulls pandas, rdflib and jsonpath-rw in for a command (`build_croissant`) we never run.

What the shim does, and nothing more: for each of the two modules that fails to import, a stub
module is put in `sys.modules` only while the TFDS CLI module is imported. A stub holds just the
names that import needs (`apache_beam.DoFn`, `mlcroissant.Dataset`, as bare base classes); any
other attribute, and creating an instance, raise an `ImportError` that says what to install.
After the import the stubs are removed again, so the rest of TFDS sees exactly what it sees
without the shim (its own "is Beam installed?" checks stay truthful); only
`tfds convert_format --use_beam` and `tfds build_croissant`, which kept references to the stubs,
report the stubs' errors (`tfds convert_format` without `--use_beam` works). With both packages
installed the shim does nothing.

Run it as `eyegazer-tfds` (console script) or `python -m eyegazer_keras.cli.tfds`, with the
arguments of `tfds`:

```sh
eyegazer-tfds build datasets/aptos2019 --manual_dir ~/Downloads --config 512
python -m eyegazer_keras.cli.tfds build datasets/synthetic_fundus --config tiny --data_dir /tmp/d
```
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from collections.abc import Iterator

logger = logging.getLogger(__name__)

TFDS_CLI_MODULE = "tensorflow_datasets.scripts.cli.main"
# Module -> (names the TFDS CLI import needs from it, what needs the real package, pip name).
STUBBED_MODULES = {
    "apache_beam": (
        ("DoFn",),
        "Beam-based datasets or `tfds convert_format --use_beam`",
        "apache-beam",
    ),
    "mlcroissant": (("Dataset",), "`tfds build_croissant`", "mlcroissant"),
}
MISSING_MESSAGE = (
    "{module} is not installed (eyegazer-tfds started the tfds command without it), so "
    "`{module}.{name}` is unavailable. It is only needed for {needed_for}: install it with "
    "`pip install {pip_name}` for those. The eyegazer datasets (aptos2019, synthetic_fundus) "
    "do not need it."
)


def _stub_module(module: str) -> types.ModuleType:
    """Builds a stand-in for a missing optional module.

    Args:
        module: str. A key of `STUBBED_MODULES`.

    Returns:
        A module whose needed names are bare base classes (instantiating one raises
        `ImportError`); any other public attribute raises `ImportError` naming the package.
    """
    names, needed_for, pip_name = STUBBED_MODULES[module]

    def missing(name: str) -> ImportError:
        return ImportError(
            MISSING_MESSAGE.format(
                module=module, name=name, needed_for=needed_for, pip_name=pip_name
            )
        )

    def placeholder(name: str) -> type:
        def __init__(self, *args, **kwargs):
            del self, args, kwargs
            raise missing(name)

        return type(name, (), {"__init__": __init__, "__module__": module})

    def __getattr__(name: str):
        if name.startswith("__"):
            # Dunder lookups (`__path__`, `__file__`, ...) by importlib, inspect, pickle.
            raise AttributeError(name)
        raise missing(name)

    stub = types.ModuleType(module, f"Stand-in for {module} (see eyegazer_keras.cli.tfds).")
    for name in names:
        setattr(stub, name, placeholder(name))
    stub.__getattr__ = __getattr__
    return stub


@contextlib.contextmanager
def _stubs_for_missing_modules() -> Iterator[list[str]]:
    """Puts stubs for the missing `STUBBED_MODULES` in `sys.modules` for the duration.

    Yields:
        The names of the modules that were stubbed (empty when all are installed). On exit the
        stubs this call added are removed from `sys.modules`.
    """
    stubs = {}
    for module in STUBBED_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            stubs[module] = sys.modules[module] = _stub_module(module)
    if stubs:
        logger.debug("Importing the tfds CLI with stubs for %s.", ", ".join(stubs))
    try:
        yield list(stubs)
    finally:
        for module, stub in stubs.items():
            if sys.modules.get(module) is stub:
                del sys.modules[module]


def import_tfds_cli() -> types.ModuleType:
    """Imports the TFDS command-line module, with stubs for its missing optional imports.

    Returns:
        The `tensorflow_datasets.scripts.cli.main` module (its `launch_cli()` runs `tfds`).
    """
    with _stubs_for_missing_modules():
        return importlib.import_module(TFDS_CLI_MODULE)


def main() -> None:
    """Runs the `tfds` command with the arguments in `sys.argv`, without Beam or mlcroissant.

    The arguments are those of `tfds` (absl reads them from `sys.argv`), e.g.
    `build datasets/aptos2019 --manual_dir D --data_dir D --config 512`.
    """
    import_tfds_cli().launch_cli()


if __name__ == "__main__":
    main()
