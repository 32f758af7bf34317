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


# the README's shell blocks that only use metarl-fast (not the install and development blocks)
REDUCED_TRAIN = " --iterations 2 --eval-every 1 --eval-tasks 4 --meta-batch 4 --episodes 4"


def shell_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    return [b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
            if not re.search(r"\b(pip|pytest|setup\.py)\b", b)]


def test_the_readme_has_its_shell_examples():
    assert len(shell_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(shell_blocks())))
def test_each_readme_shell_block_runs_on_its_own(tmp_path, index):
    """Every block in a fresh shell and an empty directory, each `metarl-fast train` at reduced
    size (options given last win), into a run directory of its own."""
    pytest.importorskip("gymnasium", reason="the README's gym: examples need Gymnasium (the test extra)")
    block = shell_blocks()[index]
    lines = [line + REDUCED_TRAIN if line.startswith("metarl-fast train") else line
             for line in block.splitlines()]
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"README shell block {index} failed:\n{block}\n{proc.stderr[-2000:]}"
