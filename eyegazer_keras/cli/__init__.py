"""`eyegazer`: the command line. Thin: parse, call one library function, print.

Exit code 0 on success; on bad input a one-line reason on stderr and a non-zero code.

The verbs live in `eyegazer_keras.cli.commands`, one module per family (`prepare`, `training`,
`run_folder`, `exported`, `demo`), each registering its `Verb`s (name, help, `run(args) -> int`,
`arguments(parser)`) with `@verb(name, arguments=...)`, the help being the first line of `run`'s
docstring; this module gathers them in `VERBS`, builds the parser and runs one.
Verbs import the library lazily, inside `run`, so `eyegazer --help` and `eyegazer predict` never
load keras-hub (or TensorFlow, for `--help`). To add a verb from outside the package:

```python
from eyegazer_keras.cli import main, verb


def _hello_arguments(p):
    p.add_argument("--name", default="world")


@verb("hello", "print a greeting", arguments=_hello_arguments)
def cmd_hello(args):
    print(f"hello {args.name}")
    return 0


assert main(["hello", "--name", "retina"]) == 0  # prints "hello retina"
```

Outputs default to one root, `--root` (default `runs/`, or `$EYEGAZER_ROOT`): run folders go to
`<root>/<config>` and prepared datasets to `<root>/tfds` unless `--data-dir`, `--set data_dir=`,
`$EYEGAZER_DATA_DIR` or `$TFDS_DATA_DIR` say otherwise. Every verb that writes prints the
resolved absolute paths first.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import sys
import threading

from eyegazer_keras.cli.commands import demo, exported, prepare, run_folder, training
from eyegazer_keras.cli.commands.common import Verb, default_root, registrar

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError, KeyError)


# --------------------------------------------------------------------------------------------
# The verb registry
# --------------------------------------------------------------------------------------------
# name -> Verb, in `eyegazer --help` order: the package's verbs, then any that `verb` adds.
VERBS: dict[str, Verb] = {
    name: v
    for family in (prepare, training, run_folder, exported, demo)
    for name, v in family.VERBS.items()
}
verb = registrar(VERBS)


# --------------------------------------------------------------------------------------------
# Errors and start-up noise
# --------------------------------------------------------------------------------------------
def _is_tf_error(err: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(err, tf.errors.OpError)


def _expected(err: BaseException) -> bool:
    """Bad input, missing files, unreadable data: reported in one line, no traceback."""
    import zipfile

    if isinstance(err, EXPECTED_ERRORS + (TypeError, ArithmeticError, zipfile.BadZipFile)):
        return True
    return "tensorflow" in sys.modules and _is_tf_error(err)


# What TensorFlow/XLA/absl write to the process's stderr (fd 2) at start-up, before and beside
# any Python logging: absl/glog-format INFO and WARNING lines, CUDA probing errors on machines
# without a GPU driver, the CPU-instruction notice, and oneDNN's "supports DT_BOOL / DT_UINT8
# only on platforms with AVX-512" fallback notices ("E" lines on CPUs TF does not count as
# AVX-512, e.g. AMD Zen: tensorflow 2.21.0 util.cc). TF_CPP_MIN_LOG_LEVEL does not reach the
# lines logged before absl::InitializeLog (tensorflow/tensorflow#100442).
NATIVE_NOISE = re.compile(
    r"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*(cuInit|CUDA|cuda|cuFFT|cuDNN|cuBLAS)"
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ util\.cc:\d+\] oneDNN supports DT_\w+ only"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "
    r"|To enable the following instructions: .*rebuild TensorFlow)"
    r".*$"  # to the end of the line (it may follow a progress bar's carriage return)
)


def drop_native_noise(line: str) -> str:
    """`line` without the `NATIVE_NOISE` part; "" if nothing but the noise was in it."""
    kept = NATIVE_NOISE.sub("", line.rstrip("\n"))
    if kept == line.rstrip("\n"):
        return line
    return kept + "\n" if kept.strip() else ""


# What the start of a `NATIVE_NOISE` line can look like before its newline has arrived.
_NOISE_START = re.compile(rb"(W|WA|WAR|WARN|WARNI|WARNIN|WARNING.*|[IWE]\d.*|\d{4}-.*|T|To.*)\Z")


def may_begin_native_noise(partial: bytes) -> bool:
    """True when `partial` (stderr bytes with no newline yet) may be the start of a native log
    line, whose filtering needs the whole line; a progress bar's redraw is not."""
    tail = partial.rsplit(b"\r", 1)[-1].rsplit(b"\x1b[A", 1)[-1]
    return bool(_NOISE_START.match(tail))


class _NativeStderrFilter:
    """Routes fd 2 through a pipe and drops `NATIVE_NOISE` lines; everything else passes.

    Installed only by the `eyegazer` program (not by `main(argv)` called in-process), because
    it replaces the process-wide file descriptor 2.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            read, write = os.pipe()
        except OSError:
            return  # no usable fd 2: leave stderr as it is
        os.dup2(write, 2)
        os.close(write)
        self._saved = saved
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _pump(self, read: int) -> None:
        pending = b""
        while True:  # keep draining even if writing fails, or writers would block
            try:
                chunk = os.read(read, 65536)
            except OSError:
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._write(line + b"\n")
            # A progress bar redraws with "\r" and no newline: pass it on now, not when the
            # next newline (or the exit) comes, unless it may begin a native log line.
            if pending and not may_begin_native_noise(pending):
                self._write(pending)
                pending = b""
        os.close(read)
        if pending:
            self._write(pending)

    def _write(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        kept = drop_native_noise(text)
        if not kept:
            return
        try:
            os.write(self._saved, data if kept is text else kept.encode("utf-8"))
        except OSError:
            pass

    def stop(self) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)  # closes the pipe's write end: the pump reads to the end
        self._thread.join(timeout=5)
        self._saved = None


def _quiet_start_up(verbose: bool) -> None:
    """Silences TensorFlow/absl start-up logging unless `verbose`."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="log at INFO level and keep TensorFlow's start-up lines",
    )
    parser.add_argument(
        "--root",
        default=default if default is argparse.SUPPRESS else default_root(),
        help="where outputs go by default (default $EYEGAZER_ROOT or runs)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `eyegazer` parser, one sub-parser per entry of `VERBS`."""
    parser = argparse.ArgumentParser(
        prog="eyegazer",
        description="Diabetic-retinopathy grading with Keras. Research software, NOT a medical device.",
    )
    _common(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)  # `eyegazer train -v` as well as `eyegazer -v train`
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for v in VERBS.values():
        p = sub.add_parser(v.name, help=v.help, description=v.help, parents=[common])
        if v.arguments:
            v.arguments(p)
        p.set_defaults(func=v.run, verb=v)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs `eyegazer` with `argv` (default `sys.argv[1:]`) and returns the exit code.

    Called with `argv=None` (the `eyegazer` program), it also filters TensorFlow's native
    start-up lines out of fd 2 unless `-v`; called with a list (tests, notebooks) it leaves the
    process's file descriptors alone.
    """
    as_program = argv is None
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_start_up(args.verbose)
    if as_program and not args.verbose:
        _NativeStderrFilter().start()
    from eyegazer_keras.training import runtime  # no TensorFlow/keras import

    runtime.add_cpu_fusion_flags()  # before any verb runs TensorFlow (`demo` prepares first)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("eyegazer: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for anything expected; a traceback for real bugs
        if args.verbose or not _expected(err):
            raise
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if "tensorflow" in sys.modules and _is_tf_error(err):
            text = getattr(err, "message", text)
        message = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        print(f"eyegazer {args.command}: error: {message}", file=sys.stderr)
        return 2
