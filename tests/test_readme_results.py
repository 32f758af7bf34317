"""The README cannot drift from the CLI: every results command it shows runs (at reduced size) and
prints a table with the header and the rows, in order, that the README shows under it.

A results block in the README is a ```console fence: a ``$ metarl-fast ...`` line, then the
command's standard output as printed at full size.  Here each command runs with fewer iterations,
tasks and seeds (options given last win), so the numbers differ but the structure must not.
"""
import os
import re
import shlex

import pytest

from test_trainer_cli import ROOT, backend_args, cli

README = os.path.join(ROOT, "README.md")

# smaller runs with the same structure (argparse: the last occurrence of an option wins)
REDUCED = {
    "train": ["--iterations", "2", "--eval-every", "1", "--eval-tasks", "12"],
    "compare": ["--iterations", "2", "--eval-every", "1", "--eval-tasks", "12", "--seeds", "0,1"],
}


def results_blocks():
    """[(argv, expected stdout lines)] of every ```console block that runs metarl-fast."""
    text = open(README, encoding="utf-8").read()
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        lines = body.rstrip("\n").split("\n")
        assert lines[0].startswith("$ metarl-fast "), lines[0]
        blocks.append((shlex.split(lines[0][2:])[1:], lines[1:]))
    return blocks


def table_structure(lines):
    """(header lines, row names in order) of a printed evaluation or comparison table."""
    headers, names = [], []
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == "method" or set(cells[0]) <= set("-"):
                headers.append(line)
            else:
                names.append(cells[0])
        elif line.startswith("method "):
            headers.append(re.sub(r"\s+", " ", line))
        elif re.match(r"^\S.*\s-?\d+\.\d{3}\s", line):  # a row of the plain-text table
            names.append(re.split(r"\s{2,}|\s(?=-?\d)", line)[0].strip())
    return headers, names


def test_readme_has_results_blocks():
    commands = [argv[0] for argv, _ in results_blocks()]
    assert commands.count("train") >= 3 and commands.count("compare") >= 2, commands


@pytest.mark.parametrize("argv,expected", results_blocks(), ids=[" ".join(a) for a, _ in results_blocks()])
def test_readme_command_prints_the_table_shown(tmp_path, argv, expected):
    reduced = list(argv) + REDUCED[argv[0]] + backend_args() + ["--out", str(tmp_path / "run")]
    if "--meta-batch" in argv:  # the in-context runs use thousands of trials per iteration
        reduced += ["--meta-batch", "50"]
    res = cli(*reduced, timeout=600)
    assert res.returncode == 0, res.stderr
    want_headers, want_rows = table_structure(expected)
    got_headers, got_rows = table_structure(res.stdout.splitlines())
    assert want_rows and got_rows == want_rows, (got_rows, want_rows)
    if argv[0] == "compare":
        # the header names the number of adaptation steps: it must match exactly
        assert got_headers == want_headers, (got_headers, want_headers)
    else:
        assert [h for h in got_headers if h.startswith("method")] == [h for h in want_headers
                                                                        if h.startswith("method")]
    # what the test tasks are (goals seen in training, or withheld from it) is said the same way
    for phrase in ("withheld from training", "also seen in training", "also a training goal"):
        if any(phrase in line for line in expected):
            assert phrase in res.stdout, (phrase, res.stdout)
