"""runtime.py: the CLI can import it for every verb without the training stack."""

import json
import os
import subprocess
import sys

IMPORT_CHECK = r"""
import json, os, sys
os.environ.pop("TF_XLA_FLAGS", None)
from eyegazer_keras.training import runtime
runtime.add_cpu_fusion_flags()
heavy = sorted(m for m in ("keras", "keras_hub", "matplotlib", "sklearn", "tensorflow")
               if m in sys.modules)
print(json.dumps({"heavy": heavy, "flags": os.environ["TF_XLA_FLAGS"]}))
"""


def test_runtime_imports_without_the_training_stack():
    """Fails if runtime.py (or eyegazer_keras/__init__) pulls in keras, keras-hub, matplotlib,
    sklearn or even TensorFlow at import: the CLI imports it before every verb."""
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert result["flags"] == "--tf_xla_cpu_global_jit --tf_xla_ops_to_cluster=FUSIBLE"


def test_fusion_flags_respect_a_user_setting(monkeypatch):
    from eyegazer_keras.training import runtime

    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_ops_to_cluster=ALL")
    runtime.add_cpu_fusion_flags()
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_ops_to_cluster=ALL"
