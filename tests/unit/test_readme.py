"""The README's two set-up commands, and CI running the test one."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Set up on a fresh machine", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.strip().splitlines()]


def test_readme_has_exactly_two_setup_commands():
    main_job, tests = setup_commands()
    assert main_job.endswith("conv3d-gen check") and tests.endswith("pytest tests")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert setup_commands()[1] in ci
