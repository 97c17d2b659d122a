"""scripts/bootstrap.sh says what it does and takes the torch build the operator asks for.

The script is run for real by bash, in a copy of the project whose ``.venv`` holds a stand-in Python
that records how it was called: installing torch for real would take minutes and the network, and what
is under test here is the script's own logic (which build, which index, what it prints), not pip.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for .venv/bin/python: "import torch" succeeds only once torch was "installed";
# "-m pip install ..." appends its arguments to calls.log and prints a line as pip would.
FAKE_PYTHON = """#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
if [ "$1" = "-c" ]; then
  case "$2" in
    *"print(torch.__version__)"*) echo "2.13.0+cpu"; exit 0 ;;
    *"import torch"*) [ -f "$here/torch-installed" ]; exit $? ;;
  esac
  exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  shift 3
  echo "$*" >> "$here/calls.log"
  case "$*" in *torch*) touch "$here/torch-installed" ;; esac
  echo "Collecting something"
  echo "Requirement already satisfied: noise"
  exit 0
fi
exit 0
"""


def _project_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", project / "scripts" / "bootstrap.sh")
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("janus-bot", "#!/usr/bin/env bash\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return project


def _bootstrap(project: Path, **env: str) -> tuple[str, list[str]]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_TORCH_")} | env
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=project, env=run_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    log = project / ".venv" / "bin" / "calls.log"
    return done.stdout, log.read_text().splitlines()


def test_a_fresh_install_says_each_step_and_takes_torch_from_the_given_index(tmp_path: Path) -> None:
    project = _project_copy(tmp_path)
    cpu_index = "https://download.pytorch.org/whl/cpu"
    out, calls = _bootstrap(project, JANUS_TORCH_INDEX=cpu_index)
    steps = [line for line in out.splitlines() if line.startswith("==> ")]
    assert steps[0] == f"==> installing torch==2.13.0 from {cpu_index}"
    assert "janus-bot" in steps[1] and steps[-1].startswith("==> done")
    assert "Collecting something" in out  # pip's own progress lines are shown ...
    assert "Requirement already satisfied" not in out  # ... without the noise of a re-run
    torch_call, project_call = calls
    assert torch_call.split() == ["--progress-bar", "off", "--index-url", cpu_index, "torch==2.13.0"]
    assert "--index-url" not in project_call and project_call.endswith("-e .[test]")


def test_an_installed_torch_is_kept_and_the_spec_can_be_changed(tmp_path: Path) -> None:
    project = _project_copy(tmp_path)
    _, calls = _bootstrap(project, JANUS_TORCH_SPEC="torch==2.14.1")
    assert calls[0].split()[-1] == "torch==2.14.1" and "--index-url" not in calls[0]
    out, calls = _bootstrap(project)  # second run: torch now imports, so only the project is installed
    assert "==> torch 2.13.0+cpu is installed; keeping it" in out
    assert calls[-1].endswith("-e .[test]") and len(calls) == 3
