"""Mutations of the compiled standard-normal fill (_core/normal.pyx): each must be caught, either
by the bit-for-bit tests or because the import-time self-check falls back to NumPy's fill and
``test_fast_path_is_active`` fails."""
from run import Mutation

T_NORMAL = ["tests/test_normal.py"]

MUTATIONS = [
    Mutation("normal-sign-bit", "metarl_fast/_core/normal.pyx",
             "bits ^= ((r >> 8) & 1) << 63", "bits ^= ((r >> 7) & 1) << 63", T_NORMAL),
    Mutation("normal-accept-boundary", "metarl_fast/_core/normal.pyx",
             "if rabs < KI[idx]:", "if rabs <= KI[idx]:", T_NORMAL,
             "accepts the first rejected magnitude of each layer"),
    Mutation("normal-replay-not-pending", "metarl_fast/_core/normal.pyx",
             "            rp.word = r\n            rp.pending = True",
             "            rp.word = r\n            rp.pending = False", T_NORMAL,
             "the rejection step draws a new word instead of the one in hand"),
    Mutation("normal-layer-mask", "metarl_fast/_core/normal.pyx",
             "idx = r & 0xFF", "idx = r & 0x7F", T_NORMAL),
    Mutation("normal-bisection-wrong-side", "metarl_fast/_core/normal.pyx",
             "                        lo = mid\n", "                        hi = mid\n", T_NORMAL),
    Mutation("normal-self-check-skipped", "metarl_fast/_core/normal.pyx",
             "    if _read_tables() and _matches_numpy(200_000):", "    if _read_tables():", T_NORMAL,
             equivalent="the self-check guards against a future NumPy with another algorithm; with this "
                        "NumPy the tables it validates are right, so skipping it changes nothing observable"),
    Mutation("normal-magnitude-shift", "metarl_fast/_core/normal.pyx",
             "rabs = (r >> 9) & MAG_MASK", "rabs = (r >> 8) & MAG_MASK", T_NORMAL),
]
