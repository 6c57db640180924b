"""Session 25 probe: seed-a's wgmma wgrad kernel (bf16) with each row's descriptors made once (a k16 step's: the
first's plus a constant) and the next row's place and waits taken while the row's products run (v32), against v29's
kernel (the template of commit d32e712, given as --old PATH) in one process. Runs s22_wgrad_build's checks and timings
(edge shapes against float64 with 1, 7 and 132 splits, seed-a on 2 samples, median_ms).

    PYTHONPATH=. python3 bench/probes/s25_wgrad_prep.py OUT_DIR --old PATH
    (git show d32e712:templates/conv3d_wgrad_wgmma.cu.j2 > PATH)"""
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conv3d_codegen.render_wgrad_wgmma as wgmma  # noqa: E402
from s21_wgrad_wgmma import SEED_A  # noqa: E402
from s22_wgrad_build import main  # noqa: E402

PROBED = [(4, 3, 8, True), (8, 1, 8, True)]
DIAGNOSED = (4, 3, 8, True)
EDGE_TILES = {"": None}
# v32's (4, KH + 3, 8, tight) with the descriptors made once a row but the next row's waits after the products, as v29
VARIANTS25 = {"nowaitahead": [("      if (!row.last) {\n        wait_for(next);", "      if (false) {\n        wait_for(next);")]}


def render_with(label: str, **patches) -> dict:
    """{"<tiles> <label>": the diagnosed configuration rendered with the render module's attributes `patches` set
    for the call (then restored), renamed "..._<label>"}."""
    tiles = wgmma.WgradWgmmaTiles(*DIAGNOSED)
    saved = {k: getattr(wgmma, k) for k in patches}
    for k, v in patches.items():
        setattr(wgmma, k, v)
    try:
        source = wgmma.render_wgrad_wgmma(SEED_A.spec, tiles, size=SEED_A.input_shape[2:])
    finally:
        for k, v in saved.items():
            setattr(wgmma, k, v)
    return {f"{tiles} {label}": source.edited(label, source.body)}


def v29() -> dict:
    """The diagnosed configuration rendered from the template at --old (v29's), renamed "..._v29"."""
    old = Path(sys.argv[sys.argv.index("--old") + 1])
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(wgmma.templates_dir(), tmp, dirs_exist_ok=True)
        shutil.copy(old, Path(tmp) / wgmma.WGRAD_WGMMA_TEMPLATE)
        return render_with("v29", templates_dir=lambda: Path(tmp))


if __name__ == "__main__":
    main(PROBED, DIAGNOSED, VARIANTS25, "s25_wgrad_prep.json", EDGE_TILES, v29)
