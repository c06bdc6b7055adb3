"""The shell of the emulated phone (testing/adb_emulator.py): its file system and commands.

Why a parser of its own instead of /bin/sh: commands from device/adb.py must be run as a
phone would, but only against the sandbox folder and a process table the emulator owns.
So the syntax is a small POSIX subset, and whatever is outside it is refused (exit 2)
rather than guessed; a quoting bug in the link then fails a test instead of passing by luck.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

DEVICE_TMP = "/data/local/tmp"


# ----------------------------------------------------------------------------- the file system


class DeviceFs:
    """Maps device paths to a host folder; nothing can resolve outside it."""

    def __init__(self, root: Path):
        self.root = root
        (root / DEVICE_TMP.lstrip("/")).mkdir(parents=True, exist_ok=True)

    def host(self, device_path: str, cwd: str = "/") -> str:
        if device_path == "/dev/null":
            return os.devnull
        absolute = posixpath.normpath(posixpath.join(cwd, device_path))
        return str(self.root / absolute.lstrip("/")) if absolute != "/" else str(self.root)

    def map_text(self, text: str) -> str:
        """Rewrites /data/local/tmp inside an argument so the host runner finds its files."""
        return text.replace(DEVICE_TMP, self.host(DEVICE_TMP))


# ----------------------------------------------------------------------------- the shell parser


class ShellSyntaxError(ValueError):
    """A command the emulator's shell refuses (it would rather fail than guess)."""


@dataclass
class Word:
    parts: list[tuple[str, str]] = field(default_factory=list)  # (text, "plain" | "quoted" | "var")

    def add(self, text: str, kind: str) -> None:
        if self.parts and kind != "var" and self.parts[-1][1] == kind:
            self.parts[-1] = (self.parts[-1][0] + text, kind)
        else:
            self.parts.append((text, kind))

    def expand(self, variables: dict[str, str]) -> str:
        return "".join(variables[t] if kind == "var" else t for t, kind in self.parts)

    def assignment(self) -> tuple[str, Word] | None:
        """NAME=value when NAME= is written unquoted at the start, as in sh."""
        if not self.parts or self.parts[0][1] != "plain":
            return None
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=", self.parts[0][0])
        if not match:
            return None
        rest = [(self.parts[0][0][match.end():], "plain")] + self.parts[1:]
        return match.group(1), Word(rest)


OPERATORS = ("2>&1", "&&", "||", ">>", "2>", ";", "&", "|", ">", "<")


def tokenize(line: str) -> list[tuple[str, object]]:
    """Splits a command line into ("op", str) and ("word", Word) tokens."""
    tokens: list[tuple[str, object]] = []
    word: Word | None = None
    i, n = 0, len(line)

    def add(text: str, kind: str) -> None:
        nonlocal word
        word = word or Word()
        word.add(text, kind)

    def flush() -> None:
        nonlocal word
        if word is not None:
            tokens.append(("word", word))
            word = None

    while i < n:
        c = line[i]
        if c in " \t\n":
            flush()
            i += 1
            continue
        if c in ";&|<>" or (word is None and line.startswith("2>", i)):
            flush()
            op = next(o for o in OPERATORS if line.startswith(o, i))
            tokens.append(("op", op))
            i += len(op)
            continue
        if c == "#" and word is None:
            break
        if c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            add(line[i + 1:end], "quoted")
            i = end + 1
        elif c == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated double quote")
                d = line[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and line[i + 1] in '\\"$`\n':
                    buf.append(line[i + 1])
                    i += 2
                    continue
                if d in "$`":
                    raise ShellSyntaxError(f"expansion {line[i:i + 2]!r} is not supported by the emulator")
                buf.append(d)
                i += 1
            add("".join(buf), "quoted")
        elif c == "\\":
            if i + 1 >= n:
                raise ShellSyntaxError("trailing backslash")
            add(line[i + 1], "quoted")
            i += 2
        elif c == "$":
            var = line[i:i + 2]
            if var not in ("$!", "$?"):
                raise ShellSyntaxError(f"expansion {var!r} is not supported by the emulator")
            add(var, "var")
            i += 2
        elif c in "*?[]`(){}":
            raise ShellSyntaxError(f"unquoted {c!r} (glob, sub-shell or group) is not supported by the emulator")
        else:
            add(c, "plain")
            i += 1
    flush()
    return tokens


@dataclass
class Command:
    assignments: list[tuple[str, Word]]
    argv: list[Word]
    redirects: list[tuple[str, Word | None]]  # (">"|">>"|"2>"|"<"|"2>&1", target)


def parse(line: str) -> list[tuple[Command, str]]:
    """Command list with the separator that follows each command (";", "&&", "||", "&")."""
    items: list[tuple[Command, str]] = []
    current = Command([], [], [])
    tokens = tokenize(line)
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "word":
            assert isinstance(value, Word)
            assignment = value.assignment() if not current.argv else None
            if assignment:
                current.assignments.append(assignment)
            else:
                current.argv.append(value)
        elif value == "|":
            raise ShellSyntaxError("pipes are not supported by the emulator")
        elif value in (">", ">>", "2>", "<"):
            if i + 1 >= len(tokens) or tokens[i + 1][0] != "word":
                raise ShellSyntaxError(f"missing file after {value}")
            current.redirects.append((str(value), tokens[i + 1][1]))  # type: ignore[arg-type]
            i += 1
        elif value == "2>&1":
            current.redirects.append(("2>&1", None))
        else:
            if not current.argv and not current.assignments:
                raise ShellSyntaxError(f"syntax error near {value!r}")
            items.append((current, str(value)))
            current = Command([], [], [])
        i += 1
    if current.argv or current.assignments:
        items.append((current, ";"))
    return items


# ----------------------------------------------------------------------------- the shell


class _Exit(Exception):
    def __init__(self, code: int):
        self.code = code


@dataclass
class Result:
    code: int = 0
    out: bytes = b""
    err: bytes = b""


class Sandbox:
    """Runs shell command lines against the device file system and a process table."""

    def __init__(self, fs: DeviceFs, props: dict[str, str], program_map: dict[str, str]):
        self.fs = fs
        self.props = props
        self.program_map = program_map
        self.processes: dict[int, tuple[subprocess.Popen, str]] = {}
        self._lock = threading.Lock()

    # -- process table (host pids of processes this emulator started)

    def live(self) -> dict[int, str]:
        with self._lock:
            return {pid: name for pid, (p, name) in self.processes.items() if p.poll() is None}

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> bool:
        """Signals a live process this emulator started (signal 0 only checks it is alive)."""
        with self._lock:
            entry = self.processes.get(pid)
        if entry is None or entry[0].poll() is not None:
            return False
        os.kill(pid, sig)
        return True

    def kill_all(self) -> None:
        for pid in self.live():
            self.kill(pid)
        with self._lock:
            procs = [p for p, _ in self.processes.values()]
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)

    # -- running command lines

    async def run(self, line: str) -> Result:
        try:
            items = parse(line)
        except ShellSyntaxError as exc:
            return Result(2, b"", f"/system/bin/sh: {exc}\n".encode())
        if any(sep == "&" and i > 0 and items[i - 1][1] in ("&&", "||") for i, (_, sep) in enumerate(items)):
            # sh would background the whole list in a subshell ($! = the subshell): refuse it.
            return Result(2, b"", b"/system/bin/sh: backgrounding an && / || list is not supported by the emulator\n")
        total = Result()
        env = {"!": "", "?": "0"}
        cwd = ["/"]
        status, previous = 0, ";"
        for command, separator in items:
            skip = (previous == "&&" and status != 0) or (previous == "||" and status == 0)
            previous = separator
            if skip:
                continue
            variables = {"$!": env["!"], "$?": str(status)}
            try:
                res = await self._run_command(command, variables, cwd, background=separator == "&", env=env)
            except _Exit as done:
                status = done.code
                break
            total.out += res.out
            total.err += res.err
            status = res.code
        total.code = status
        return total

    async def _run_command(self, command: Command, variables: dict[str, str], cwd: list[str],
                           background: bool, env: dict[str, str]) -> Result:
        argv = [w.expand(variables) for w in command.argv]
        assigns = {name: w.expand(variables) for name, w in command.assignments}
        redirects = [(op, w.expand(variables) if w else "") for op, w in command.redirects]
        detach = False
        while argv and argv[0] in ("nohup", "setsid"):
            argv, detach = argv[1:], True
        if not argv:
            return Result()
        name = argv[0]
        if "/" in name or name in self.program_map:
            return await asyncio.to_thread(self._spawn, argv, assigns, redirects, cwd[0], background, env)
        if name == "exit":
            raise _Exit(int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else int(variables["$?"]))
        builtin = getattr(self, "_b_" + name, None)
        if builtin is None:
            res = Result(127, b"", f"/system/bin/sh: {name}: not found\n".encode())
        elif name == "cd":
            res = self._b_cd(argv[1:], cwd)
        else:
            res = await asyncio.to_thread(builtin, argv[1:], cwd[0])
        return self._redirect_result(res, redirects, cwd[0])

    def _redirect_result(self, res: Result, redirects: list[tuple[str, str]], cwd: str) -> Result:
        out, err = res.out, res.err
        for op, target in redirects:
            if op == "2>&1":
                out, err = out + err, b""
            elif op in (">", ">>"):
                with open(self.fs.host(target, cwd), "ab" if op == ">>" else "wb") as f:
                    f.write(out)
                out = b""
            elif op == "2>":
                with open(self.fs.host(target, cwd), "wb") as f:
                    f.write(err)
                err = b""
        return Result(res.code, out, err)

    def _spawn(self, argv: list[str], assigns: dict[str, str], redirects: list[tuple[str, str]],
               cwd: str, background: bool, env: dict[str, str]) -> Result:
        device_program = posixpath.normpath(posixpath.join(cwd, argv[0]))
        program = self.program_map.get(device_program) or self.program_map.get(posixpath.basename(argv[0]))
        program = program or self.fs.host(device_program)
        if not os.path.isfile(program):
            return Result(127, b"", f"/system/bin/sh: {argv[0]}: not found\n".encode())
        if not os.access(program, os.X_OK):
            return Result(126, b"", f"/system/bin/sh: {argv[0]}: can't execute: Permission denied\n".encode())
        environment = {"PATH": "/usr/bin:/bin", "HOME": self.fs.host(DEVICE_TMP), "TMPDIR": self.fs.host(DEVICE_TMP)}
        environment.update({k: self.fs.map_text(v) for k, v in assigns.items()})
        files: dict[str, object] = {"stdin": subprocess.DEVNULL,
                                    "stdout": subprocess.DEVNULL if background else subprocess.PIPE,
                                    "stderr": subprocess.DEVNULL if background else subprocess.PIPE}
        opened = []
        for op, target in redirects:
            if op == "2>&1":
                files["stderr"] = subprocess.STDOUT
                continue
            mode = {">": "wb", ">>": "ab", "2>": "wb", "<": "rb"}[op]
            f = open(self.fs.host(target, cwd), mode)
            opened.append(f)
            files[{">": "stdout", ">>": "stdout", "2>": "stderr", "<": "stdin"}[op]] = f
        try:
            proc = subprocess.Popen([program] + [self.fs.map_text(a) for a in argv[1:]],
                                    cwd=self.fs.host(cwd), env=environment, start_new_session=True,
                                    **files)  # type: ignore[arg-type]
        finally:
            for f in opened:
                f.close()
        with self._lock:
            self.processes[proc.pid] = (proc, posixpath.basename(argv[0]))
        if background:
            env["!"] = str(proc.pid)
            return Result()
        out, err = proc.communicate()
        return Result(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode, out or b"", err or b"")

    # -- built-ins: (args, cwd) -> Result

    def _b_cd(self, args: list[str], cwd: list[str]) -> Result:
        target = posixpath.normpath(posixpath.join(cwd[0], args[0] if args else DEVICE_TMP))
        if not os.path.isdir(self.fs.host(target)):
            return Result(2, b"", f"/system/bin/sh: cd: {target}: No such file or directory\n".encode())
        cwd[0] = target
        return Result()

    def _b_getprop(self, args: list[str], cwd: str) -> Result:
        if not args:
            return Result(0, "".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.props.items())).encode())
        return Result(0, (self.props.get(args[0], args[1] if len(args) > 1 else "") + "\n").encode())

    def _b_sha256sum(self, args: list[str], cwd: str) -> Result:
        res = Result()
        for path in args:
            try:
                h = hashlib.sha256()
                with open(self.fs.host(path, cwd), "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                res.out += f"{h.hexdigest()}  {path}\n".encode()
            except OSError:
                res.err += f"sha256sum: {path}: No such file or directory\n".encode()
                res.code = 1
        return res

    def _b_rm(self, args: list[str], cwd: str) -> Result:
        flags = "".join(a[1:] for a in args if a.startswith("-"))
        res = Result()
        for path in (a for a in args if not a.startswith("-")):
            host = self.fs.host(path, cwd)
            if host == str(self.fs.root) or host == self.fs.host(DEVICE_TMP):
                res.err += f"rm: {path}: Permission denied\n".encode()
                res.code = 1
            elif os.path.isdir(host) and not os.path.islink(host):
                if "r" in flags:
                    shutil.rmtree(host)
                else:
                    res.err += f"rm: {path}: Is a directory\n".encode()
                    res.code = 1
            elif os.path.lexists(host):
                os.unlink(host)
            elif "f" not in flags:
                res.err += f"rm: {path}: No such file or directory\n".encode()
                res.code = 1
        return res

    def _b_mkdir(self, args: list[str], cwd: str) -> Result:
        parents = "-p" in args
        res = Result()
        for path in (a for a in args if not a.startswith("-")):
            try:
                os.makedirs(self.fs.host(path, cwd), exist_ok=parents) if parents else os.mkdir(self.fs.host(path, cwd))
            except OSError as exc:
                res.err += f"mkdir: {path}: {exc.strerror}\n".encode()
                res.code = 1
        return res

    def _b_cat(self, args: list[str], cwd: str) -> Result:
        res = Result()
        for path in args:
            try:
                res.out += Path(self.fs.host(path, cwd)).read_bytes()
            except OSError:
                res.err += f"cat: {path}: No such file or directory\n".encode()
                res.code = 1
        return res

    def _b_echo(self, args: list[str], cwd: str) -> Result:
        return Result(0, (" ".join(args) + "\n").encode())

    def _b_kill(self, args: list[str], cwd: str) -> Result:
        sig, res = signal.SIGTERM, Result()
        for arg in args:
            if arg.startswith("-"):
                name = arg[1:].upper()
                sig = int(name) if name.isdigit() else signal.Signals["SIG" + name.removeprefix("SIG")]
            elif not arg.isdigit() or not self.kill(int(arg), sig):
                res.err += f"kill: {arg}: No such process\n".encode()
                res.code = 1
        return res

    def _b_pidof(self, args: list[str], cwd: str) -> Result:
        pids = [str(pid) for pid, name in sorted(self.live().items()) if name in args]
        return Result(0 if pids else 1, (" ".join(pids) + "\n").encode() if pids else b"")
