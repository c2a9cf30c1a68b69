"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text()
    text = README.read_text()
    for command in ('python3 -m pip install -e ".[test]"', "python3 -m pytest -q"):
        assert command in text and command in ci


def test_readme_first_command_is_the_installed_main_job():
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert 'python3 -m pip install -e ".[test]" && atomjax-reconstruct\n' in first
    pyproject = (README.parent / "pyproject.toml").read_text()
    assert 'atomjax-reconstruct = "atomjax.apps:reconstruct_main"' in pyproject
