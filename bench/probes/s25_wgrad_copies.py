"""Session 25 probe: who asks for the builders' input rows. In v29 thread 0 of warp 10 asks the copy engine for input
row k - 2 + RAWS at the top of each row's loop; run 5's timeline found that block taking ~465 cycles a row, warp 10 the
last builder warp to arrive at BUILT in every row and the builders' loop the rows' period. Variants of v29's (4, KH +
3, 8, tight) (results correct): the copies asked by warp 15 (lane 0) instead ("w15"), or by warps 10 and 15 in turn
("alt": warp 10 for even k, 15 for odd; both walk the input rows). Runs s22_wgrad_build's checks and timings.

    PYTHONPATH=. python3 bench/probes/s25_wgrad_copies.py OUT_DIR"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s22_wgrad_build import main  # noqa: E402

PROBED = [(4, 3, 8, True)]
DIAGNOSED = (4, 3, 8, True)
EDGE_TILES = {"": None}
FIRST = ("  if (bt == 0) {\n    for (int q = 0; q < RAWS && !ahead.done(); ++q, ahead.next()) {\n"
         "      mbar_expect(raw_full + 8 * q, RAWBYTES);\n"
         "      copy_input_rows(raws + q * RAWSLOT, xmap, ahead.j - PH, ahead.od - PD, ahead.n, raw_full + 8 * q);\n"
         "    }\n  }\n")
LOOP = ("    if (bt == 0 && k >= 2 && !ahead.done()) {\n      const int old = (k - 2) % RAWS;\n"
        "      mbar_wait(raw_empty + 8 * old, ((k - 2) / RAWS) & 1);\n      mbar_expect(raw_full + 8 * old, RAWBYTES);\n"
        "      copy_input_rows(raws + old * RAWSLOT, xmap, ahead.j - PH, ahead.od - PD, ahead.n, raw_full + 8 * old);\n"
        "      ahead.next();\n    }\n")
VARIANTS25C = {
    "w15": [(FIRST, FIRST.replace("bt == 0", "bt == 160")), (LOOP, LOOP.replace("bt == 0", "bt == 160"))],
    "alt": [(FIRST, "  if (bt == 0 || bt == 160) {\n    for (int q = 0; q < RAWS && !ahead.done(); ++q, ahead.next()) {\n"
                    "      if (bt != 0) continue;\n"
                    "      mbar_expect(raw_full + 8 * q, RAWBYTES);\n"
                    "      copy_input_rows(raws + q * RAWSLOT, xmap, ahead.j - PH, ahead.od - PD, ahead.n, raw_full + 8 * q);\n"
                    "    }\n  }\n"),
            (LOOP, "    if ((bt == 0 || bt == 160) && k >= 2 && !ahead.done()) {\n      const int old = (k - 2) % RAWS;\n"
                   "      if (bt == (k & 1) * 160) {\n"
                   "        mbar_wait(raw_empty + 8 * old, ((k - 2) / RAWS) & 1);\n"
                   "        mbar_expect(raw_full + 8 * old, RAWBYTES);\n"
                   "        copy_input_rows(raws + old * RAWSLOT, xmap, ahead.j - PH, ahead.od - PD, ahead.n, raw_full + 8 * old);\n"
                   "      }\n      ahead.next();\n    }\n")],
}


def variant_sources() -> dict:
    """Each variant of the diagnosed configuration, checked as well as timed (s22's main checks only names that are
    not among its variants)."""
    from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles, render_wgrad_wgmma
    from s21_wgrad_wgmma import SEED_A, edit
    tiles = WgradWgmmaTiles(*DIAGNOSED)
    seed = render_wgrad_wgmma(SEED_A.spec, tiles, size=SEED_A.input_shape[2:])
    sources = {}
    for name, edits in VARIANTS25C.items():
        body = seed.body
        for old, new in edits:
            body = edit(body, old, new)
        sources[f"{tiles} {name}"] = seed.edited(name, body)
    return sources


if __name__ == "__main__":
    main(PROBED, DIAGNOSED, {}, "s25_wgrad_copies.json", EDGE_TILES, variant_sources)
