"""Issue 14 (the command line): one-line errors without abbreviations, run directories that never
collide, `--resume --iterations N` extending a finished run, METARL_FAST_BACKEND honoured by
`train`, and no traceback when the reader of the output leaves (`| head`)."""
import json
import os
import subprocess
import sys

import pytest

from metarl_fast.cli import main, new_run_dir

SMALL = ["--tasks", "chain", "--iterations", "2", "--eval-every", "1", "--eval-tasks", "5"]


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "metarl_fast", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.mark.parametrize("args", [["train", "--iter", "3"], ["train", "--iterationz", "3"], ["bogus"],
                                  ["train", "--meta-batch", "x"], ["compare", "--seed", "1"]])
def test_argparse_mistakes_are_one_line_without_abbreviations(args):
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarl-fast: error:"), proc.stderr
    assert "usage:" not in proc.stderr


def test_run_directories_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = {new_run_dir() for _ in range(50)}
    assert len(made) == 50 and all(os.path.isdir(p) for p in made)
    # two trainings started at once, each in its own directory
    procs = [subprocess.Popen([sys.executable, "-m", "metarl_fast", "train", *SMALL], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    runs = [d for d in os.listdir(tmp_path / "runs") if (tmp_path / "runs" / d / "checkpoint.npz").exists()]
    assert len(runs) == 3


def test_resume_with_more_iterations_extends_a_finished_run(tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL, "--out", out]) == 0
    assert main(["train", "--resume", "--out", out, "--iterations", "4"]) == 0
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [x["iteration"] for x in lines] == [1, 2, 3, 4]
    # a setting that changes what is trained is still refused
    assert main(["train", "--resume", "--out", out, "--meta-lr", "0.5"]) == 2


def test_train_honours_the_backend_environment_variable(tmp_path):
    proc = _cli("train", *SMALL, "--out", str(tmp_path / "run"), env={"METARL_FAST_BACKEND": "numpy"})
    assert proc.returncode == 0 and "backend numpy" in proc.stderr, proc.stderr[-500:]
    proc = _cli("train", *SMALL, "--out", str(tmp_path / "run2"), "--backend", "numpy",
                env={"METARL_FAST_BACKEND": "cython"})
    assert proc.returncode == 0 and "backend numpy" in proc.stderr, proc.stderr[-500:]


def test_a_reader_that_leaves_gets_no_traceback():
    """stdout is a pipe whose reader is gone: the command ends quietly (BrokenPipeError caught)."""
    code = ("import os, sys\n"
            "r, w = os.pipe(); os.close(r)\n"
            "sys.stdout = os.fdopen(w, 'w', buffering=1)\n"
            "from metarl_fast.cli import main\n"
            "code = main(['info'])\n"
            "sys.stderr.write(f'exit {code}\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr and "exit 0" in proc.stderr, proc.stderr
