"""The extension records the torch it was built for and refuses to load under another."""
import os
import subprocess
import sys

import torch

import specopt
from specopt import _C


def test_build_info_is_this_torch():
    assert specopt.build_info.TORCH_VERSION == torch.__version__
    # CMake's LibTorch, the headers _C was compiled with, and this Python's torch are one release.
    assert _C.libtorch_version == specopt.build_info.LIBTORCH_VERSION
    assert torch.__version__.startswith(specopt.build_info.LIBTORCH_VERSION)
    assert specopt.build_info.CXX_STANDARD >= 17


def test_import_under_another_torch_is_refused():
    code = ("import sys, torch; torch.__version__ = '0.0.1+other'\n"
            "try:\n"
            "    import specopt\n"
            "except ImportError as e:\n"
            "    print(e)\n"
            "    print('_C loaded:', 'specopt._C' in sys.modules)\n"
            "    raise SystemExit(3)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    msg = proc.stdout
    assert f"built against torch {torch.__version__}" in msg
    assert "imports torch 0.0.1+other" in msg
    assert "pip install --no-build-isolation ." in msg
    # The check runs before the extension is loaded.
    assert "_C loaded: False" in msg
