"""The git steps of one node: clone (into a temp dir, renamed into place), inspect, update.

Git never asks anything: no terminal prompt, no askpass, ssh in batch mode, and
stdin is closed. Every command has a timeout; transient clone failures are
retried with backoff.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from agent import procs
from agent.errors import StepFailed
from agent.tasklog import TaskLog

CLONE_TRIES = 3
BACKOFF_SECONDS = (1.0, 3.0)
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")
# Failures that another try cannot fix.
_PERMANENT = re.compile(
    r"not found|does not exist|no such repository|not exported|"
    r"does not appear to be a git repository|"
    r"Could not find remote branch|couldn't find remote ref|not our ref|"
    r"Authentication failed|Permission denied|could not read Username|"
    r"terminal prompts disabled|access denied|invalid|"
    r"appeared while cloning|not the pinned commit",
    re.IGNORECASE,
)


# No credential helpers or askpass programs (they may open a prompt or a window),
# and never a remote helper that runs commands, even from a submodule's URL.
_SAFE_CONFIG = (
    "-c",
    "credential.helper=",
    "-c",
    "core.askPass=",
    "-c",
    "protocol.ext.allow=never",
)


def umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # not thread-safe; only where /proc says nothing
    os.umask(current)
    return current


def temp_prefix(task_id: str) -> str:
    """Temp clone dirs are hidden (ComfyUI skips them) and name their task."""
    return f".nodeferry-{task_id[:8]}-"


def git_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in ("GIT_ASKPASS", "SSH_ASKPASS", "GIT_DIR", "GIT_WORK_TREE"):
        env.pop(name, None)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GCM_INTERACTIVE"] = "never"
    # Keep a user's own ssh command (a deploy key, say), but never let it ask.
    ssh = env.get("GIT_SSH_COMMAND") or env.get("GIT_SSH") or "ssh"
    env.pop("GIT_SSH", None)
    env["GIT_SSH_COMMAND"] = ssh + " -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
    env["LC_ALL"] = "C"
    return env


class Git:
    def __init__(
        self,
        log: TaskLog,
        children: procs.Children,
        timeout: float,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.log = log
        self.children = children
        self.timeout = timeout
        self.env = git_env(env)
        self.umask = umask()

    def run(self, args: Sequence[str], prefix: str, cwd: Optional[Path] = None) -> procs.Result:
        argv = ["git", *_SAFE_CONFIG, *args]
        return procs.run(
            argv,
            log=self.log,
            prefix=prefix,
            children=self.children,
            timeout=self.timeout,
            cwd=str(cwd) if cwd else None,
            env=self.env,
        )

    def output(self, args: Sequence[str], prefix: str, cwd: Path) -> Optional[str]:
        result = self.run(args, prefix, cwd)
        if not result.ok:
            return None
        return result.tail[-1].strip() if result.tail else ""

    # -- inspecting an existing directory ------------------------------------------

    def origin_of(self, directory: Path, prefix: str) -> Optional[str]:
        """The origin URL of the repo whose top level is ``directory``, else None."""
        if not (directory / ".git").exists():
            return None
        top = self.output(["rev-parse", "--show-toplevel"], prefix, directory)
        if top is None or os.path.realpath(top) != os.path.realpath(directory):
            return None
        return self.output(["config", "--get", "remote.origin.url"], prefix, directory) or ""

    def head(self, directory: Path, prefix: str) -> str:
        sha = self.output(["rev-parse", "HEAD"], prefix, directory)
        if not sha:
            raise StepFailed(f"cannot read the checked-out commit in {directory}")
        return sha

    # -- clone ---------------------------------------------------------------------

    def clone(self, url: str, ref: Optional[str], dest: Path, prefix: str, tmp_prefix: str) -> str:
        """Clone ``url`` at ``ref`` into ``dest`` (which must not exist); returns the commit.

        The clone happens in a temp dir beside ``dest`` that is renamed into place
        only when complete, so a failed or cancelled clone leaves nothing behind.
        """
        last_error = ""
        shallow_submodules = True
        for attempt in range(1, CLONE_TRIES + 1):
            tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix + dest.name + "-", dir=dest.parent))
            # mkdtemp makes a private 0700 dir; the node folder must get the mode
            # `git clone` would give it, or a ComfyUI running as another user
            # cannot load it.
            tmp.chmod(0o777 & ~self.umask)
            try:
                return self._clone_and_place(url, ref, tmp, dest, prefix, shallow_submodules)
            except StepFailed as exc:
                last_error = str(exc)
                if shallow_submodules and "submodule" in last_error.lower():
                    # Servers that refuse to send an unadvertised commit break a
                    # shallow submodule whose pinned commit is not a branch tip.
                    shallow_submodules = False
                elif attempt == CLONE_TRIES or _PERMANENT.search(last_error):
                    raise
                self.log.line(prefix, f"clone attempt {attempt} failed; retrying")
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            self.children.sleep(BACKOFF_SECONDS[min(attempt - 1, len(BACKOFF_SECONDS) - 1)])
        raise StepFailed(last_error)  # pragma: no cover - the loop returns or raises

    def _clone_and_place(
        self,
        url: str,
        ref: Optional[str],
        tmp: Path,
        dest: Path,
        prefix: str,
        shallow_submodules: bool = True,
    ) -> str:
        self._clone_into(url, ref, tmp, prefix, shallow_submodules)
        sha = self.head(tmp, prefix)
        if ref is not None and _COMMIT.match(ref) and not sha.startswith(ref.lower()):
            raise StepFailed(f"checked out {sha}, not the pinned commit {ref}")
        if dest.exists() or dest.is_symlink():
            raise StepFailed(f"{dest} appeared while cloning; left it untouched")
        tmp.rename(dest)
        return sha

    def _clone_into(
        self, url: str, ref: Optional[str], tmp: Path, prefix: str, shallow_submodules: bool
    ) -> None:
        if ref is not None and _COMMIT.match(ref):
            # A commit cannot be named to a shallow clone portably: fetch history.
            self._must(["clone", "--no-checkout", "--", url, str(tmp)], prefix, "git clone")
            target = ref
            if (
                self.output(["rev-parse", "--verify", "--quiet", ref + "^{commit}"], prefix, tmp)
                is None
            ):
                # Not a known commit: maybe a branch or tag that looks like hex.
                target = "origin/" + ref
            self._must(["checkout", "--quiet", "--detach", target], prefix, "git checkout", cwd=tmp)
            self._must(
                ["submodule", "update", "--init", "--recursive"],
                prefix,
                "git submodule update",
                cwd=tmp,
            )
            return
        args: List[str] = ["clone", "--depth", "1", "--recurse-submodules"]
        if shallow_submodules:
            args.append("--shallow-submodules")
        if ref is not None:
            args += ["--branch", ref]
        self._must([*args, "--", url, str(tmp)], prefix, "git clone")

    def _must(
        self, args: Sequence[str], prefix: str, what: str, cwd: Optional[Path] = None
    ) -> procs.Result:
        result = self.run(args, prefix, cwd)
        if not result.ok:
            raise StepFailed(result.describe(what))
        return result

    # -- update ----------------------------------------------------------------------

    def update(self, directory: Path, ref: Optional[str], prefix: str) -> str:
        """Bring an existing clone to ``ref`` (or its branch's latest); returns the commit."""
        shallow = self.output(["rev-parse", "--is-shallow-repository"], prefix, directory)
        fetch = ["fetch", "--quiet", "origin"]
        if shallow == "true":
            # New history down to the old shallow boundary; keeps the clone small.
            fetch.insert(1, "--update-shallow")
        fetch.append(ref if ref is not None else "HEAD")
        self._must(fetch, prefix, "git fetch", cwd=directory)
        if ref is not None:
            self._must(
                ["checkout", "--quiet", "--detach", "FETCH_HEAD"],
                prefix,
                "git checkout",
                cwd=directory,
            )
        else:
            self._must(
                ["merge", "--ff-only", "FETCH_HEAD"], prefix, "git merge --ff-only", cwd=directory
            )
        self._must(
            ["submodule", "update", "--init", "--recursive"],
            prefix,
            "git submodule update",
            cwd=directory,
        )
        return self.head(directory, prefix)


def same_origin(a: str, b: str) -> bool:
    """Whether two remote URLs name the same repository.

    ``https://github.com/u/r``, ``https://github.com/u/r.git/`` and
    ``git@github.com:u/r.git`` all do: host and path are compared, not the
    scheme, user or port a clone happened to use.
    """
    return _repo_key(a) == _repo_key(b)


def _repo_key(url: str) -> str:
    url = url.strip()
    if "://" in url:
        rest = url.split("://", 1)[1]
        host, _slash, path = rest.partition("/")
        host = host.rsplit("@", 1)[-1]
        if not host.startswith("["):
            host = host.split(":", 1)[0]
        if not host:  # file:///path
            host = "localhost"
    elif re.match(r"^[^/]+@[^/:]+:", url):
        host, path = url.split("@", 1)[1].split(":", 1)
    else:
        host, path = "localhost", url
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[: -len(".git")]
    return (host + "/" + path.strip("/")).lower()
