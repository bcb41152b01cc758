"""The `tfds` command, able to start without apache-beam.

Why this exists: the `tfds` command of tensorflow-datasets 4.9.10 cannot start unless
`apache_beam` is importable, even for builders that never use Beam (ours do not).
`tensorflow_datasets/scripts/cli/main.py` imports `convert_format.py`, which imports
`convert_format_utils.py`, which defines `class ConvertMetadataFn(beam.DoFn)` at module level
(line ~248). `beam` there is an `etils.epy.lazy_imports` module, so that class statement
imports `apache_beam` and `tfds --help` already dies with
`ModuleNotFoundError: No module named 'apache_beam'`.

Why not `pip install apache-beam`: apache-beam pins older pillow and protobuf than the versions
this project is pinned to and tested against, so installing it would downgrade them.

What the shim does, and nothing more: when `import apache_beam` fails, a stub module is put in
`sys.modules["apache_beam"]` only while the TFDS CLI module is imported. The stub holds a
`DoFn` base class (all the import needs); any other attribute, and creating a `DoFn`, raise an
`ImportError` that says to install apache-beam. After the import the stub is removed again, so
the rest of TFDS sees exactly what it sees without the shim (its own "is Beam installed?" checks
stay truthful); only `tfds convert_format`, which kept a reference to the stub, reports the
stub's error. With apache-beam installed the shim does nothing.

Run it as `eyegazer-tfds` (console script) or `python -m eyegazer_keras.tfds_cli`, with the
arguments of `tfds`:

```sh
eyegazer-tfds build datasets/aptos2019 --manual_dir ~/Downloads --config 512
python -m eyegazer_keras.tfds_cli build datasets/synthetic_fundus --config tiny --data_dir /tmp/d
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

BEAM_MODULE = "apache_beam"
TFDS_CLI_MODULE = "tensorflow_datasets.scripts.cli.main"
MISSING_BEAM_MESSAGE = (
    "apache_beam is not installed (eyegazer-tfds started the tfds command without it). "
    "`apache_beam.{name}` is only needed for Beam-based datasets or `tfds convert_format`: "
    "install apache-beam for those (`pip install apache-beam`; note that it may downgrade "
    "pillow and protobuf). The eyegazer datasets (aptos2019, synthetic_fundus) do not need it."
)


def _missing_beam_stub() -> types.ModuleType:
    """Builds the stand-in `apache_beam` module.

    Returns:
        A module with a `DoFn` base class; other public attributes raise `ImportError`.
    """

    class DoFn:
        """Stand-in for `apache_beam.DoFn`: subclassing works, creating one does not."""

        def __init__(self, *args, **kwargs):
            del args, kwargs
            raise ImportError(MISSING_BEAM_MESSAGE.format(name="DoFn"))

    def __getattr__(name: str):
        if name.startswith("__"):
            # Dunder lookups (`__path__`, `__file__`, ...) by importlib, inspect, pickle.
            raise AttributeError(name)
        raise ImportError(MISSING_BEAM_MESSAGE.format(name=name))

    stub = types.ModuleType(BEAM_MODULE, "Stand-in for apache_beam (see eyegazer_keras.tfds_cli).")
    stub.DoFn = DoFn
    stub.__getattr__ = __getattr__
    return stub


@contextlib.contextmanager
def _beam_stub_if_missing() -> Iterator[None]:
    """Puts the `apache_beam` stub in `sys.modules` for the duration, when Beam is missing.

    Yields:
        Nothing; on exit the stub (if this call added it) is removed from `sys.modules`.
    """
    try:
        importlib.import_module(BEAM_MODULE)
    except ImportError:
        pass
    else:
        yield
        return
    stub = _missing_beam_stub()
    sys.modules[BEAM_MODULE] = stub
    logger.debug("apache_beam is not installed: importing the tfds CLI with a stub.")
    try:
        yield
    finally:
        if sys.modules.get(BEAM_MODULE) is stub:
            del sys.modules[BEAM_MODULE]


def import_tfds_cli() -> types.ModuleType:
    """Imports the TFDS command-line module, with the Beam stub when Beam is missing.

    Returns:
        The `tensorflow_datasets.scripts.cli.main` module (its `launch_cli()` runs `tfds`).
    """
    with _beam_stub_if_missing():
        return importlib.import_module(TFDS_CLI_MODULE)


def main() -> None:
    """Runs the `tfds` command (arguments from `sys.argv`), without requiring apache-beam.

    Args:
        None. The arguments are those of `tfds` (e.g. `build DIR --manual_dir D --data_dir D
            --config C`), read from `sys.argv` by absl.
    """
    import_tfds_cli().launch_cli()


if __name__ == "__main__":
    main()
