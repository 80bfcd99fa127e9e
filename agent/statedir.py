"""The agent's state directory on the instance and the paths inside it.

``<root>/tasks/<task_id>/{spec.json,progress.json,lock.json,agent.log}``, ``<root>/locks/``,
``<root>/agent/<sha256>.pyz``. Private to the user (mode 700): it is never under
``/tmp``, where another user could plant symlinks.
"""

import os
from pathlib import Path
from typing import Iterator, Optional

from agent.errors import InvalidInput
from protocol import ProtocolError
from protocol.fields import task_id as check_task_id

ENV_VAR = "NODEFERRY_STATE_DIR"


def default_root() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".nodeferry")


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise InvalidInput(f"{path} is not a directory", code="bad_state_dir")
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


class TaskPaths:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.spec = directory / "spec.json"
        self.progress = directory / "progress.json"
        self.log = directory / "agent.log"
        self.constraints = directory / "constraints.txt"
        self.lock = directory / "lock.json"
        #: every ComfyUI start the import check ran: its argv and its output
        self.comfyui_check = directory / "comfyui-check.log"

    @property
    def task_id(self) -> str:
        return self.dir.name


class StateDir:
    def __init__(self, root: Optional[Path] = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.tasks = self.root / "tasks"
        self.locks = self.root / "locks"
        self.agent = self.root / "agent"

    def ensure(self) -> "StateDir":
        for path in (self.root, self.tasks, self.locks):
            _private_dir(path)
        return self

    def task(self, task_id: str) -> TaskPaths:
        """The paths of one task; the id is checked before it becomes part of a path."""
        try:
            checked = check_task_id(task_id)
        except ProtocolError as exc:
            raise InvalidInput(exc.message, field="task_id", code="invalid_task_id") from None
        return TaskPaths(self.tasks / checked)

    def create_task(self, task_id: str) -> TaskPaths:
        self.ensure()
        paths = self.task(task_id)
        try:
            paths.dir.mkdir(mode=0o700)
        except FileExistsError:
            raise InvalidInput(
                f"task {task_id} already exists on this instance", field="task_id"
            ) from None
        return paths

    def iter_tasks(self) -> Iterator[TaskPaths]:
        if not self.tasks.is_dir():
            return
        for entry in sorted(self.tasks.iterdir()):
            try:
                paths = self.task(entry.name)
            except InvalidInput:
                continue
            if entry.is_dir() and not entry.is_symlink():
                yield paths
