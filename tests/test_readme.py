"""CI runs exactly the README's test command, and the README's main-job command runs the embedded default."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_run_and_test_commands():
    run, test = _readme_commands()[:2]
    assert "torchrun" in run and "launch.run" in run and "pip install -e ." in run
    assert "pytest" in test and '".[test]"' in test


def test_ci_calls_the_readme_test_command():
    test = _readme_commands()[1]
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()
