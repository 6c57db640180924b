"""The wheel carries the templates and the CLI, and needs no torch to build."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_templates_and_the_console_script(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("conv3d_codegen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.name for p in (REPO / "templates").glob("*.j2"))
    assert sorted(Path(n).name for n in names if n.startswith("conv3d_codegen/templates/")) == templates
    assert "conv3d_codegen/cli.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "conv3d-gen = conv3d_codegen.cli:main" in entry_points
    assert not any(n.startswith("cache/") for n in names)
