"""The Python API starts like the CLI (issue 30: from Python, IISAN_THREADS was ignored and
no per-epoch lines appeared): threads from IISAN_THREADS, and iisan's log lines on stderr
when logging is not configured. Each case runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    environment.update(PYTHONPATH=str(REPO / "src"), **env)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)


def test_iisan_threads_is_honoured_from_python():
    result = python("import iisan, torch; iisan.TrainConfig; print(torch.get_num_threads())", IISAN_THREADS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_a_callers_torch_threads_are_kept_unless_iisan_threads_says_otherwise():
    code = "import torch; torch.set_num_threads(3); import iisan; iisan.TrainConfig; print(torch.get_num_threads())"
    assert python(code).stdout.strip() == "3"
    assert python(code, IISAN_THREADS="2").stdout.strip() == "2"


def test_log_lines_appear_unless_logging_is_configured():
    code = "import logging, iisan; iisan.TrainConfig; logging.getLogger('iisan.training.loop').info('epoch 1 ...')"
    assert "epoch 1 ..." in python(code).stderr
    configured = "import logging; logging.basicConfig(level=logging.ERROR); " + code.replace("import logging, ", "import ")
    assert "epoch 1 ..." not in python(configured).stderr
