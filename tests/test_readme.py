"""The README's Python examples run as written, each on its own (imports included), so they stay true."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) >= 6
    first = blocks[0].strip().splitlines()
    assert len(first) <= 15, "the first example is at most 15 lines"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_each_readme_python_block_runs_on_its_own(tmp_path, index):
    """Every block in a fresh interpreter, in an empty directory: nothing from another block."""
    block = python_blocks()[index]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"README block {index} failed:\n{block}\n{proc.stderr[-2000:]}"
