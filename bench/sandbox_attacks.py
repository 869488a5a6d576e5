"""Hostile code against tools.Sandbox: which attacks are contained, in each isolation mode.

    python bench/sandbox_attacks.py                # every attack in every mode that works here
    python bench/sandbox_attacks.py --steps 0      # the attacks only, no timing

Each attack is a small function: it sets up what it needs on the host (a file, a server, a second
sandbox), runs model code in a sandbox of the given mode, and returns None if the attack was
contained, else one line saying what got through. tests/test_sandbox_attacks.py runs the same list,
so a case that escapes fails the test suite too. Prints a table, then `RESULT name=value` lines
last; figures go to bench/RESULTS.md.

An attack that needs a root host (its own uid per sandbox, files only root may read) is skipped on
a non-root host, and says so.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import Sandbox, probe_isolation, processes_of  # noqa: E402

TIMEOUT_S = 3.0
HOST_IS_ROOT = os.geteuid() == 0
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Skip(Exception):
    """The attack does not apply on this host (e.g. it needs root)."""


@dataclass(frozen=True)
class Attack:
    name: str
    what: str                             # one line: what the code tries
    run: Callable[[str], str | None]      # mode -> None if contained, else what got through


def sandbox(mode: str, **kwargs) -> Sandbox:
    return Sandbox(timeout_s=kwargs.pop("timeout_s", TIMEOUT_S), isolation=mode, **kwargs)


# ---------------------------------------------------------------------------------------------------
# the attacks
# ---------------------------------------------------------------------------------------------------

def symlink_chmod(mode: str) -> str | None:
    """Symlinks in the work directory to host directories: clean-up must not chmod or delete them."""
    target = tempfile.mkdtemp(prefix="score-attack-target-")
    os.chmod(target, 0o751)
    open(os.path.join(target, "keep.txt"), "w").close()
    before_root = os.stat("/").st_mode
    try:
        with sandbox(mode) as box:
            box.run(f"import os\nos.symlink({target!r}, 'to_target')\nos.symlink('/', 'to_root')\n"
                    f"os.mkdir('d')\nos.symlink({target!r}, 'd/inner')\nos.chmod('d', 0)")
        if os.stat("/").st_mode != before_root:
            os.chmod("/", before_root & 0o7777)  # undo the damage, or the machine stays locked
            return "clean-up changed the mode of / through a symlink"
        if os.stat(target).st_mode & 0o777 != 0o751:
            return "clean-up changed the mode of a symlink's target"
        if not os.path.exists(os.path.join(target, "keep.txt")):
            return "clean-up deleted files through a symlink"
        return None
    finally:
        os.remove(os.path.join(target, "keep.txt"))
        os.rmdir(target)


def orphans_outlive_close(mode: str) -> str | None:
    """A step forks children that call setsid() and wait: nothing may survive close()."""
    with sandbox(mode) as box:
        result = box.run("import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        os.setsid()\n"
                         "        time.sleep(300)\n")
        uid = int(box.run("import os\nprint(os.getuid())").text)
        if not result.error:
            return "fork() worked inside the sandbox"
    time.sleep(0.05)
    survivors = processes_of(uid) if HOST_IS_ROOT else []
    return f"{len(survivors)} processes of the sandbox outlived close()" if survivors else None


def orphan_of_the_uid_is_killed(mode: str) -> str | None:
    """A process running under the sandbox's uid that left its session dies at close() (root)."""
    if not HOST_IS_ROOT:
        raise Skip("needs a root host (a uid per sandbox)")
    import subprocess
    with sandbox(mode) as box:
        uid = int(box.run("import os\nprint(os.getuid())").text)
        # The host plants the orphan itself: the sandbox cannot fork, so this is the case of a
        # kernel without seccomp, or of a process that escaped otherwise.
        orphan = subprocess.Popen(["sleep", "300"], user=uid, group=uid, start_new_session=True)
    time.sleep(0.05)
    alive = orphan.poll() is None
    if alive:
        orphan.kill()
    orphan.wait()
    return "a process of the sandbox's uid outlived close()" if alive else None


def shared_process_limit(mode: str) -> str | None:
    """Two sandboxes at once have different uids, so one's limit does not loosen with the other."""
    if not HOST_IS_ROOT:
        raise Skip("needs a root host (a uid per sandbox)")
    with sandbox(mode) as first, sandbox(mode) as second:
        uids = {int(box.run("import os\nprint(os.getuid())").text) for box in (first, second)}
    return "two sandboxes share a uid" if len(uids) == 1 else None


def deep_tree(mode: str) -> str | None:
    """1500 nested directories, some unreadable, then a fatal step: clean-up must not recurse."""
    code = ("import os\nfor i in range(1500):\n    os.mkdir('dd')\n    os.chdir('dd')\n"
            "os.chdir(os.environ['HOME'])\nos.chmod('dd', 0o000)\n")
    with sandbox(mode, timeout_s=20) as box:
        workdir = box.run("import os\nprint(os.getcwd())").text.strip()
        box.run(code)
        if not box.run("import os\nos._exit(3)").fatal:  # stop the worker: its tree is removed now
            return "os._exit was not fatal"
        if box.run("print('alive')").text != "alive\n":
            return "the sandbox did not come back after the fatal step"
    time.sleep(0.05)
    return f"the work directory {workdir} was left behind" if os.path.exists(workdir) else None


def lone_surrogate(mode: str) -> str | None:
    """An error message and an answer with a lone surrogate must reach the tokenizer as valid text."""
    with sandbox(mode) as box:
        raised = box.run("raise ValueError('\\udcff')")
        answered = box.run("final_answer('x\\ud800y')")
    for text in (raised.text, answered.answer or ""):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"text with a lone surrogate came out: {text[-40:]!r}"
    return None if raised.error and "ValueError" in raised.text else "the error was lost"


def read_root_only_files(mode: str) -> str | None:
    """/etc/shadow and a file only root may read: no capability lets the code read them."""
    if not HOST_IS_ROOT:
        raise Skip("needs a root host (files only root may read)")
    secret_dir = tempfile.mkdtemp(prefix="score-attack-secret-")  # mode 0700, root's
    secret = os.path.join(secret_dir, "secret.txt")
    with open(secret, "w") as file:
        file.write("hunter2")
    try:
        with sandbox(mode) as box:
            for path in ("/etc/shadow", secret, "/root"):
                if not os.path.exists(path):
                    continue
                code = (f"import os\np = {path!r}\n"
                        "print(os.listdir(p) if os.path.isdir(p) else open(p).read()[:20])")
                result = box.run(code)
                if not result.error:
                    return f"read {path}: {result.text[:60]!r}"
        return None
    finally:
        os.remove(secret)
        os.rmdir(secret_dir)


def read_project_and_runs(mode: str) -> str | None:
    """bwrap mode: the project checkout (and its runs/ with reference answers) is not visible."""
    if mode != "bwrap":
        raise Skip("limits mode cannot hide readable files (see tools.py's docstring)")
    with sandbox(mode) as box:
        result = box.run(f"import os\nprint(sorted(os.listdir({PROJECT_DIR!r})))")
    visible = result.text.strip()
    if result.error or visible in ("[]", "['tools.py']"):
        return None
    return f"the project checkout is visible: {visible[:80]}"


def read_run_directory(mode: str) -> str | None:
    """A run directory (reference answers in bc.jsonl, eval/teacher.jsonl) is closed to the sandbox's
    uid in both modes: runs.open_run makes it 0700 (root host: another uid cannot enter it)."""
    if not HOST_IS_ROOT:
        raise Skip("needs a root host (a uid per sandbox)")
    import dataclasses
    from runs import open_run

    @dataclasses.dataclass
    class Options:
        seed: int = 0
    parent = tempfile.mkdtemp(prefix="score-attack-runs-")
    os.chmod(parent, 0o755)
    run_dir = os.path.join(parent, "a-run")
    try:
        from pathlib import Path
        open_run(Path(run_dir), Options(), set())
        with open(os.path.join(run_dir, "bc.jsonl"), "w") as file:
            file.write('{"answer": "1972"}\n')
        with sandbox(mode) as box:
            result = box.run(f"print(open({os.path.join(run_dir, 'bc.jsonl')!r}).read())")
        return f"read the run directory: {result.text[:40]!r}" if "1972" in result.text else None
    finally:
        import shutil
        shutil.rmtree(parent)


def loopback_network(mode: str) -> str | None:
    """Connect to a server on the host's loopback, and open any socket at all."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        with sandbox(mode) as box:
            result = box.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                             "print('connected')")
        return "reached a host server on loopback" if "connected" in result.text else None
    finally:
        server.close()


def sandboxes_see_each_other(mode: str) -> str | None:
    """One sandbox reads another's files and signals its worker."""
    with sandbox(mode) as victim, sandbox(mode) as attacker:
        victim_dir = victim.run("import os\nopen('secret.txt', 'w').write('s3cret')\nprint(os.getcwd())").text.strip()
        victim_pid = int(victim.run("import os\nprint(os.getpid())").text)
        read = attacker.run(f"print(open({os.path.join(victim_dir, 'secret.txt')!r}).read())")
        if "s3cret" in read.text:
            return "read another sandbox's file"
        # In bwrap mode the pid is the victim's pid inside ITS namespace: the attacker's own
        # namespace has no such process, or one of its own that it may not signal anyway.
        attacker.run(f"import os, signal\ntry:\n    os.kill({victim_pid}, signal.SIGKILL)\nexcept OSError:\n    pass")
        if victim.run("print('alive')").text != "alive\n" or victim.run("print(1)").fatal:
            return "killed another sandbox's worker"
    return None


def temp_files_persist(mode: str) -> str | None:
    """Files written to /tmp, /var/tmp and /dev/shm must not outlive close()."""
    tag = f"score-attack-{os.getpid()}-{time.monotonic_ns()}"
    paths = [f"/tmp/{tag}", f"/var/tmp/{tag}", f"/dev/shm/{tag}"]
    code = "\n".join(f"try:\n    open({path!r}, 'w').write('x' * 1000)\nexcept OSError:\n    pass"
                     for path in paths)
    with sandbox(mode) as box:
        box.run(code)
    time.sleep(0.05)
    left = [path for path in paths if os.path.exists(path)]
    for path in left:
        os.remove(path)
    return f"left behind: {', '.join(left)}" if left else None


def forged_result_from_a_timer(mode: str) -> str | None:
    """A SIGALRM handler set in one step writes a "done" into the protocol pipe during the next one
    (or between steps), so that a step that raises is recorded as a clean, answered one."""
    forge = ("import json, os, signal\n"
             "def forge(*_):\n"
             "    for step in range(1, 10):\n"
             "        line = json.dumps({'op': 'done', 'step': step, 'error': None, 'answer': 'forged'})\n"
             "        for fd in range(3, 256):\n"
             "            try:\n"
             "                os.write(fd, (line + '\\n').encode())\n"
             "            except OSError:\n"
             "                pass\n"
             "signal.signal(signal.SIGALRM, forge)\n"
             "signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)\n")
    with sandbox(mode) as box:
        box.run(forge)
        time.sleep(0.3)  # between steps
        honest = box.run("import time\ntime.sleep(0.5)\nraise ValueError('the real error')")
    if honest.answer == "forged" or not honest.error:
        return f"the host recorded a forged result: answer={honest.answer!r}, error={honest.error}"
    return None


def trace_hook_runs_in_later_steps(mode: str) -> str | None:
    """sys.settrace / an audit hook set in one step runs inside the next one."""
    with sandbox(mode) as box:
        box.run("import sys\ndef spy(frame, event, arg):\n    print('SPY')\n    return None\n"
                "sys.settrace(spy)\ntry:\n    sys.addaudithook(lambda e, a: print('AUDIT', e))\n"
                "except RuntimeError:\n    pass")
        later = box.run("def f():\n    return 1\nf()\nimport json\nprint('done')")
    return None if later.text == "done\n" else f"a hook ran in a later step: {later.text[:60]!r}"


def replay_time_counted(mode: str) -> str | None:
    """After a fatal step, the next step's wall_s includes replaying the earlier steps."""
    with sandbox(mode) as box:
        box.run("import time\ntime.sleep(1.0)\nx = 1")
        box.run("import os\nos._exit(1)")
        result = box.run("print(x)")
    if result.text != "1\n":
        return "replay lost the state"
    return None if result.wall_s >= 1.0 else f"wall_s {result.wall_s:.2f} s leaves the 1 s replay out"


def long_search_query(mode: str) -> str | None:
    """A 1.6 MB search() query: an ordinary call, not a broken protocol."""
    with Sandbox(corpus=["alpha beta", "gamma delta"], timeout_s=TIMEOUT_S, isolation=mode) as box:
        result = box.run("r = search('gamma ' * 320_000)\nprint(r[:20])")
    return None if not result.error and "gamma" in result.text else f"failed: {result.text[-120:]!r}"


def classic(code: str, expected: str) -> Callable[[str], str | None]:
    """A one-step attack whose observation must name `expected`, after which the sandbox still works."""
    def attack(mode: str) -> str | None:
        with sandbox(mode, max_output_chars=400, memory_mb=512) as box:
            box.run("x = 42")
            result = box.run(code)
            after = box.run("print(x)")
        if expected not in result.text:
            return f"observation {result.text[-80:]!r} lacks {expected!r}"
        return None if after.text == "42\n" else "the sandbox lost its state"
    return attack


ATTACKS = [
    Attack("symlink_chmod", "symlinks to host directories in the work directory", symlink_chmod),
    Attack("orphans", "setsid() children that outlive close()", orphans_outlive_close),
    Attack("orphan_of_uid", "a process of the sandbox's uid outside its session", orphan_of_the_uid_is_killed),
    Attack("shared_uid", "two sandboxes sharing one uid and its process limit", shared_process_limit),
    Attack("deep_tree", "1500 nested directories, then a fatal step", deep_tree),
    Attack("lone_surrogate", "a lone surrogate in an error message and an answer", lone_surrogate),
    Attack("root_only_files", "/etc/shadow, root-only files, /root", read_root_only_files),
    Attack("project_and_runs", "the project checkout and run directories", read_project_and_runs),
    Attack("run_directory", "reference answers in a run directory", read_run_directory),
    Attack("loopback", "a server on the host's loopback", loopback_network),
    Attack("each_other", "another sandbox's files and worker", sandboxes_see_each_other),
    Attack("temp_files", "files in /tmp, /var/tmp, /dev/shm after close()", temp_files_persist),
    Attack("forged_result", "a timer's handler forging the next step's result", forged_result_from_a_timer),
    Attack("hooks", "trace and audit hooks running in later steps", trace_hook_runs_in_later_steps),
    Attack("replay_time", "replay after a fatal step left out of wall_s", replay_time_counted),
    Attack("long_query", "a 1.6 MB search() query", long_search_query),
    Attack("infinite_loop", "while True: pass", classic("while True:\n    pass", "Error: TimeoutError")),
    Attack("memory_bomb", "allocate until the machine swaps",
           classic("hog = []\nwhile True:\n    hog.append('x' * 10**7)", "Error: MemoryError")),
    Attack("fork_bomb", "os.fork() in a loop",
           classic("import os\nfor _ in range(8):\n    os.fork()", "Error: BlockingIOError")),
    Attack("subprocess", "start a shell command",
           classic("import subprocess\nsubprocess.run(['id'])", "Error:")),
    Attack("exec", "replace the interpreter with a shell",
           classic("import os\nos.execv('/bin/sh', ['sh'])", "Error: PermissionError")),
    Attack("kill_parent", "os.kill(os.getppid(), 9)",
           classic("import os\nos.kill(os.getppid(), 9)", "Error: PermissionError")),
    Attack("kill_all", "os.kill(-1, 9)", classic("import os\nos.kill(-1, 9)", "Error: PermissionError")),
    Attack("ptrace", "attach to the parent with ptrace",
           classic("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   "if libc.ptrace(16, os.getppid(), 0, 0) != 0:\n    raise OSError(ctypes.get_errno(), 'ptrace')",
                   "Error: PermissionError")),
    Attack("user_namespace", "unshare(CLONE_NEWUSER): become root of a new namespace",
           classic("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   "if libc.unshare(0x10000000) != 0:\n    raise OSError(ctypes.get_errno(), 'unshare')",
                   "Error: PermissionError")),
    Attack("output_flood", "print 100 MB", classic("print('x' * 100_000_000)", "Error: OutputLimitError")),
    Attack("c_crash", "dereference NULL", classic("import ctypes\nctypes.string_at(0)", "InterpreterDied")),
]


def trivial_step_latency_ms(mode: str, steps: int) -> float:
    """Median wall time of `steps` trivial steps in one sandbox (the worker already started)."""
    with sandbox(mode) as box:
        box.run("x = 0")
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            box.run("x += 1")
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def worker_start_ms(mode: str, starts: int) -> float:
    """Median wall time from Sandbox() to the first step's result (a fresh worker each time)."""
    times = []
    for _ in range(starts):
        start = time.perf_counter()
        with sandbox(mode) as box:
            box.run("pass")
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100,
                        help="trivial steps timed per mode, and 20 worker starts (0: no timing)")
    args = parser.parse_args(argv)
    modes = ["limits"] + (["bwrap"] if probe_isolation() == "bwrap" else [])
    contained = total = 0
    print(f"{'attack':<18} " + " ".join(f"{mode:<16}" for mode in modes) + " what")
    for attack in ATTACKS:
        cells = []
        for mode in modes:
            try:
                escape = attack.run(mode)
            except Skip as skip:
                cells.append("skipped")
                continue
            except Exception as error:  # the host itself failed: that is an escape too
                escape = f"host raised {type(error).__name__}: {error}"
            total += 1
            contained += escape is None
            cells.append("contained" if escape is None else "NOT CONTAINED")
            if escape is not None:
                print(f"  {attack.name} [{mode}]: {escape}")
        print(f"{attack.name:<18} " + " ".join(f"{cell:<16}" for cell in cells) + f" {attack.what}")
    if args.steps:  # side by side: modes alternate, so a busy spell hits both
        steps = {mode: [] for mode in modes}
        starts = {mode: [] for mode in modes}
        for _ in range(5):
            for mode in modes:
                steps[mode].append(trivial_step_latency_ms(mode, args.steps // 5 or 1))
                starts[mode].append(worker_start_ms(mode, 4))
        for mode in modes:
            print(f"RESULT sandbox_step_ms_{mode}={statistics.median(steps[mode]):.2f}")
            print(f"RESULT sandbox_start_ms_{mode}={statistics.median(starts[mode]):.1f}")
    print(f"RESULT sandbox_contained={contained}/{total}")
    return 0 if contained == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
