"""Perform contrib/docker/Dockerfile's steps without Docker, and check the result serves.

Usage: ``python tools/check_dockerfile.py [DOCKERFILE]`` (stdlib only). Exit status 0 when every
check passed, 1 when one failed (it says which), 2 on a usage error.

What it does, in a fresh temporary folder standing for the image's file system:

1. parses the Dockerfile (line continuations, comments, exec and shell forms);
2. checks the image's shape: a ``-slim`` Python base, a ``USER`` that is not root,
   ``STOPSIGNAL SIGTERM``, a ``HEALTHCHECK`` on ``/livez``, a ``CMD``;
3. makes a fresh virtual environment (the base image's Python is this Python) and performs
   ``ENV``, ``WORKDIR``, ``COPY`` (from the build context: the repository root, filtered by
   ``Dockerfile.dockerignore`` when there is one) and ``RUN`` with that environment first on
   ``PATH``. Commands that change this machine's users (``useradd``, ...) are not run: the
   image makes its user, the check only verifies that ``USER`` is not root;
4. starts the ``CMD`` as ``docker run -p`` would reach it: its ``0.0.0.0:8000`` and
   ``0.0.0.0:9000`` become free loopback ports (the same substitution in the HEALTHCHECK);
   waits for ``/livez`` 200 on the admin port and a 200 from the app; runs the HEALTHCHECK's
   command (exit 0); sends the ``STOPSIGNAL`` and checks a clean exit (status 0).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import venv
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "contrib" / "docker" / "Dockerfile"
APP_PORT, ADMIN_PORT = 8000, 9000
SYSTEM_COMMANDS = ("useradd", "groupadd", "adduser", "addgroup", "usermod", "chown", "apt-get", "apk")
READY_TIMEOUT = 60.0


class CheckFailed(Exception):
    pass


@dataclass
class Instruction:
    name: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the line, continuations joined
    flags: dict[str, str] = field(default_factory=dict)  # --interval=10s, ...

    def words(self) -> list[str]:
        """Exec form (a JSON array) as it is, shell form as ``sh -c`` would get it."""
        text = self.args.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                pass
            else:
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    return value
        return ["/bin/sh", "-c", text]


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, in order."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        whole = (pending + line.strip()).strip()
        pending = ""
        if whole:
            out.append(instruction(whole))
    if pending.strip():
        out.append(instruction(pending.strip()))
    return out


def instruction(whole: str) -> Instruction:
    name, _, rest = whole.partition(" ")
    inst = Instruction(name.upper(), rest.strip())
    if inst.name in ("HEALTHCHECK", "COPY", "ADD", "RUN", "FROM"):
        while inst.args.startswith("--"):
            flag, _, after = inst.args.partition(" ")
            key, _, value = flag[2:].partition("=")
            inst.flags[key] = value
            inst.args = after.strip()
    if inst.name == "HEALTHCHECK" and inst.args.upper().startswith("CMD "):
        inst.args = inst.args[4:].strip()
    return inst


def env_pairs(args: str) -> dict[str, str]:
    """ENV k=v k2="v 2" (or the old form ENV k v)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def last(instructions: list[Instruction], name: str) -> Instruction | None:
    found = [i for i in instructions if i.name == name]
    return found[-1] if found else None


def check_shape(instructions: list[Instruction]) -> list[str]:
    """What the image must be, as problems in words (empty: none)."""
    problems = []
    base = last(instructions, "FROM")
    if base is None or not base.args.split()[0].startswith("python:") or "-slim" not in base.args:
        problems.append("FROM must be a python:*-slim image")
    user = last(instructions, "USER")
    if user is None or user.args.split(":")[0] in ("root", "0"):
        problems.append("USER must be a non-root user")
    stop = last(instructions, "STOPSIGNAL")
    if stop is None or stop.args.strip() != "SIGTERM":
        problems.append("STOPSIGNAL must be SIGTERM (the graceful stop)")
    health = last(instructions, "HEALTHCHECK")
    if health is None or "/livez" not in health.args:
        problems.append("HEALTHCHECK must probe /livez")
    elif "curl" in health.args or "wget" in health.args:
        problems.append("HEALTHCHECK must not need curl or wget (not in the slim image)")
    cmd = last(instructions, "CMD")
    if cmd is None:
        problems.append("no CMD")
    else:
        words = cmd.words()
        if f"0.0.0.0:{APP_PORT}" not in words or f"0.0.0.0:{ADMIN_PORT}" not in words:
            problems.append(f"CMD must bind 0.0.0.0:{APP_PORT} and --stats-bind 0.0.0.0:{ADMIN_PORT}")
    return problems


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether a path of the build context is excluded (.dockerignore: the last match wins)."""
    out = False
    for pat in patterns:
        negate = pat.startswith("!")
        p = pat[1:] if negate else pat
        p = p.rstrip("/")
        if p == "**" or fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p + "/*") or rel.startswith(p + "/"):
            out = not negate
        elif p.startswith("**/") and (fnmatch.fnmatch(rel, p[3:]) or f"/{p[3:]}/" in f"/{rel}/"):
            out = not negate
    return out


def ignore_patterns(dockerfile: Path, context: Path) -> list[str]:
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.exists():
            lines = candidate.read_text().splitlines()
            return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    return []


def copy_context(context: Path, dest: Path, patterns: list[str]) -> int:
    """Copy the build context's files that .dockerignore keeps; returns how many."""
    n = 0
    for path in sorted(context.rglob("*")):
        rel = path.relative_to(context).as_posix()
        if path.is_dir() or ignored(rel, patterns):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        n += 1
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_free_ports(words: list[str], ports: dict[int, int]) -> list[str]:
    """The command with 0.0.0.0:PORT (and 127.0.0.1:PORT) replaced by loopback free ports."""
    out = []
    for w in words:
        for inside, outside in ports.items():
            w = w.replace(f"0.0.0.0:{inside}", f"127.0.0.1:{outside}")
            w = w.replace(f"127.0.0.1:{inside}", f"127.0.0.1:{outside}")
        out.append(w)
    return out


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_status(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"the CMD exited ({proc.returncode}) before {url} answered:\n{log.read_text()}")
        if get(url) == 200:
            return
        time.sleep(0.1)
    raise CheckFailed(f"no 200 from {url} within {READY_TIMEOUT:g} s:\n{log.read_text()}")


class Build:
    """The image's steps, performed in a temporary folder."""

    def __init__(self, dockerfile: Path, context: Path, tmp: Path) -> None:
        self.dockerfile = dockerfile
        self.context = context
        self.root = tmp / "image"  # the image's /
        self.venv = tmp / "venv"
        drop = ("PREFORK_LB_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "WEB_CONCURRENCY")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        self.workdir = self.root

    def inside(self, path: str) -> Path:
        p = Path(path)
        return self.root / p.relative_to("/") if p.is_absolute() else self.workdir / p

    def prepare(self) -> None:
        print(f"venv: {self.venv} (standing for the base image's Python)")
        venv.EnvBuilder(with_pip=True, clear=True).create(self.venv)
        self.env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["VIRTUAL_ENV"] = str(self.venv)
        self.root.mkdir(parents=True, exist_ok=True)

    def perform(self, inst: Instruction) -> None:
        if inst.name == "ENV":
            self.env.update(env_pairs(inst.args))
        elif inst.name == "WORKDIR":
            self.workdir = self.inside(inst.args.strip())
            self.workdir.mkdir(parents=True, exist_ok=True)
        elif inst.name in ("COPY", "ADD"):
            self.copy(inst)
        elif inst.name == "RUN":
            self.run(inst)
        else:
            return
        print(f"  {inst.name} {inst.args}")

    def copy(self, inst: Instruction) -> None:
        *sources, dest = inst.words() if inst.args.startswith("[") else shlex.split(inst.args)
        if inst.flags.get("from"):
            raise CheckFailed(f"COPY --from is not supported by this check: {inst.args}")
        target = self.inside(dest)
        patterns = ignore_patterns(self.dockerfile, self.context)
        for src in sources:
            if src == ".":
                n = copy_context(self.context, target, patterns)
                print(f"    ({n} files from the build context)")
            else:
                source = self.context / src
                if source.is_dir():
                    copy_context(source, target, patterns)
                    continue
                if dest.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    target = target / source.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)

    def run(self, inst: Instruction) -> None:
        text = inst.args
        if text.startswith("["):
            commands = [shlex.join(inst.words())]
        else:
            commands = [c.strip() for c in text.split("&&")]
        for cmd in commands:
            program = shlex.split(cmd)[0] if cmd else ""
            if program in SYSTEM_COMMANDS:
                print(f"    skipped: {cmd} (changes this machine, not a sandbox; the image does it)")
                continue
            done = subprocess.run(["/bin/sh", "-c", cmd], cwd=self.workdir, env=self.env, timeout=600)
            if done.returncode != 0:
                raise CheckFailed(f"RUN {cmd} failed with exit status {done.returncode}")

    def check_installed(self) -> None:
        """The package the CMD imports is the one the RUN steps installed, not a checkout's."""
        code = "import prefork_lb; print(prefork_lb.__file__)"
        done = subprocess.run(
            ["python", "-c", code], cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=60
        )
        where = done.stdout.strip()
        if done.returncode != 0 or not Path(where).is_relative_to(self.venv):
            raise CheckFailed(f"prefork_lb is not installed in the image's Python: {where or done.stderr}")
        print(f"  installed: {where}")


def serve_and_stop(build: Build, instructions: list[Instruction], tmp: Path) -> None:
    cmd, health, stop = (
        last(instructions, "CMD"),
        last(instructions, "HEALTHCHECK"),
        last(instructions, "STOPSIGNAL"),
    )
    assert cmd is not None and health is not None and stop is not None
    ports = {APP_PORT: free_port(), ADMIN_PORT: free_port()}
    argv = on_free_ports(cmd.words(), ports)
    log = tmp / "cmd.log"
    print(
        f"CMD (container ports {APP_PORT}, {ADMIN_PORT} on {ports[APP_PORT]}, {ports[ADMIN_PORT]}): {shlex.join(argv)}"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=build.workdir,
            env=build.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_status(f"http://127.0.0.1:{ports[ADMIN_PORT]}/livez", proc, log)
        print("  /livez: 200")
        wait_status(f"http://127.0.0.1:{ports[APP_PORT]}/", proc, log)
        print("  the app: 200")
        probe = on_free_ports(health.words(), ports)
        done = subprocess.run(
            probe, cwd=build.workdir, env=build.env, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise CheckFailed(f"HEALTHCHECK {shlex.join(probe)} exited {done.returncode}: {done.stderr}")
        print("  HEALTHCHECK: exit 0")
        sig = signal.Signals[stop.args.strip()]
        proc.send_signal(sig)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"still running 60 s after {sig.name}:\n{log.read_text()}") from None
        if code != 0:
            raise CheckFailed(f"exit status {code} after {sig.name}:\n{log.read_text()}")
        print(f"  {sig.name}: clean exit (0)")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def check(dockerfile: Path, context: Path) -> None:
    instructions = parse(dockerfile.read_text())
    problems = check_shape(instructions)
    if problems:
        raise CheckFailed("; ".join(problems))
    print(f"{dockerfile}: FROM python slim, non-root USER, STOPSIGNAL SIGTERM, HEALTHCHECK /livez, CMD")
    with tempfile.TemporaryDirectory(prefix="check-dockerfile-") as tmp_name:
        tmp = Path(tmp_name)
        build = Build(dockerfile, context, tmp)
        build.prepare()
        for inst in instructions:
            build.perform(inst)
        build.check_installed()
        serve_and_stop(build, instructions, tmp)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python tools/check_dockerfile.py [DOCKERFILE]", file=sys.stderr)
        return 2
    dockerfile = Path(argv[0]).resolve() if argv else DOCKERFILE
    t0 = time.monotonic()
    try:
        check(dockerfile, ROOT)
    except CheckFailed as exc:
        print(f"check_dockerfile: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"check_dockerfile: OK ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
