"""The suite keeps the habits that make its failures mean something."""
import glob
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))


def test_every_expected_exception_names_the_check_that_fired():
    """``pytest.raises(E)`` alone passes whichever check raised E; ``match=`` pins the one meant."""
    missing = []
    for path in sorted(glob.glob(os.path.join(HERE, "*.py"))):
        if os.path.basename(path) == "test_suite_hygiene.py":
            continue
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"pytest\.raises\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):  # the whole call, however many lines it spans
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            if "match=" not in text[m.end():i]:
                missing.append(f"{os.path.basename(path)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not missing, f"pytest.raises without match=: {missing}"
