"""Loaded by every Python child of the test session (it is first on $PYTHONPATH there):
installs the network guard of `tests/_netguard.py` before the child runs anything else."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_eyegazer_netguard",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_netguard.py"),
)
_netguard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_netguard)
_netguard.install()
