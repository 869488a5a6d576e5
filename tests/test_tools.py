"""Tests for tools.py: the sandboxed interpreter, its observations, search, replay, and hostile code.

Every hostile step runs in both isolation modes ("bwrap" is skipped, with the reason, only where
bubblewrap does not work). Each test's docstring says what would break if it failed.
"""

import os
import re
import socket
import sys
import time

import pytest

from tools import (ELISION_MARKER, NO_CORPUS_MESSAGE, SANDBOX_UID_BASE, SANDBOX_UID_COUNT, Sandbox,
                   SearchIndex, _elide_middle, process_is_live, _OutputCapture, _remove_tree, _seccomp_program, probe_isolation)

BWRAP_WORKS = probe_isolation() == "bwrap"
MODES = [
    pytest.param("limits"),
    pytest.param("bwrap", marks=pytest.mark.skipif(
        not BWRAP_WORKS, reason="bubblewrap does not work on this machine (probe_isolation() == 'limits')")),
]
HOST_IS_ROOT = os.geteuid() == 0


def live_processes(session_ids):
    """Pids of live (non-zombie) processes whose session is one of `session_ids`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in "ZX" and int(fields[3]) in session_ids:
                found.append(int(name))
    return found


# ---------------------------------------------------------------------------------------------
# pure helpers: elision and bounded capture
# ---------------------------------------------------------------------------------------------

def test_elide_middle_matches_a_naive_cut():
    """If this fails, observations lose their head or tail, exceed the budget, or miscount."""
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    for limit in (40, 100, 999, 1000, 5000):
        result = _elide_middle(text, "", 0, limit)
        if limit >= len(text):
            assert result == text
            continue
        assert len(result) <= limit
        elided = int(re.search(r"\[(\d+) characters elided\]", result).group(1))
        head, tail = result.split(ELISION_MARKER.format(elided))
        assert text.startswith(head) and text.endswith(tail)
        assert len(head) + elided + len(tail) == len(text)  # every character is shown or counted


def test_output_capture_is_bounded_and_counts_characters():
    """If this fails, a 100 MB print costs the host 100 MB, or the elided count is wrong for UTF-8."""
    capture = _OutputCapture(keep_bytes=1000)
    chunk = ("é" * 1000 + "x" * 1000).encode()  # 3000 bytes, 2000 characters
    for _ in range(5000):  # 15 MB in all
        capture.feed(chunk)
    assert len(capture.head) + len(capture.tail) == 2000  # only the kept bytes are held
    assert capture.total_bytes == 5000 * 3000
    text = capture.text(300)
    assert len(text) <= 300 and text.startswith("é") and text.endswith("x")
    elided = int(re.search(r"\[(\d+) characters elided\]", text).group(1))
    visible = len(text) - len(ELISION_MARKER.format(elided))
    assert visible + elided == 5000 * 2000  # characters, not bytes


# ---------------------------------------------------------------------------------------------
# the interpreter as the agent uses it
# ---------------------------------------------------------------------------------------------

def test_state_persists_across_steps():
    """If this fails, the agent loses its variables, imports and functions between steps."""
    with Sandbox(timeout_s=5) as box:
        assert not box.run("import math\nx = 6\ndef double(v):\n    return 2 * v").error
        result = box.run("print(double(x), math.sqrt(49))")
        assert result.text == "12 7.0\n" and not result.error and result.answer is None


def test_stdout_and_stderr_are_captured_in_order():
    """If this fails, the model misses what it printed, its warnings, or low-level writes."""
    with Sandbox(timeout_s=5) as box:
        result = box.run("import sys, os\nprint('out')\nsys.stderr.write('err\\n')\nos.write(1, b'raw\\n')")
        assert result.text == "out\nerr\nraw\n"
        assert not result.error


def test_error_points_at_the_models_code_never_the_host():
    """If this fails, observations leak host internals (tools.py frames) or lose the failing line."""
    with Sandbox(timeout_s=5) as box:
        box.run("def inverse(v):\n    return 1 / v")  # a function from an earlier step
        result = box.run("print('before')\ny = inverse(0)")
        assert result.error and not result.fatal
        assert result.text == "before\nError: ZeroDivisionError: division by zero (at line 2: y = inverse(0))"
        assert "tools.py" not in result.text and "Traceback" not in result.text
        syntax = box.run("x = = 1")
        assert syntax.error and syntax.text.startswith("Error: SyntaxError: invalid syntax")
        assert box.run("print('still fine')").text == "still fine\n"


def test_long_output_is_elided_in_the_middle():
    """If this fails, observations blow the model's context or lose their beginning or end."""
    with Sandbox(timeout_s=5, max_output_chars=200) as box:
        result = box.run("print('a' * 5000 + 'b' * 5000)")
        assert len(result.text) <= 200 and not result.error
        assert result.text.startswith("aaa") and result.text.endswith("bbb\n")
        elided = int(re.search(r"\[(\d+) characters elided\]", result.text).group(1))
        assert len(result.text) - len(ELISION_MARKER.format(elided)) + elided == 10001


def test_final_answer_ends_the_step_with_a_string():
    """If this fails, answers are not recorded as strings, or code after final_answer still runs."""
    with Sandbox(timeout_s=5) as box:
        result = box.run("print('working')\nfinal_answer(6 * 7)\nprint('never')")
        assert result.answer == "42" and result.text == "working\n" and not result.error
        assert box.run("final_answer([1, 2])").answer == "[1, 2]"
        assert box.run("print(1)").answer is None  # the answer belongs to its own step


def test_search_puts_the_right_passage_first():
    """If this fails, lookup tasks cannot find their facts, or each sandbox rebuilds the index."""
    index = SearchIndex(["Mount Everest is the highest mountain on Earth.",
                         "Paris is the capital of France.",
                         "The Nile is a long river in Africa."])
    with Sandbox(corpus=index, timeout_s=5) as box, Sandbox(corpus=index, timeout_s=5) as other:
        result = box.run("print(search('What is the capital of France?', k=2))")
        assert result.text.splitlines()[0] == "[1] Paris is the capital of France."
        assert other.run("r = search('highest mountain')\nprint(r.count('['))").text == "1\n"
    assert index.search("zebra quantum") == "No passage matches the query 'zebra quantum'."


def test_search_without_a_corpus_says_so():
    """If this fails, a task with no corpus gives the model a confusing crash instead of a message."""
    with Sandbox(timeout_s=5) as box:
        result = box.run("print(search('anything'))")
        assert result.text == NO_CORPUS_MESSAGE + "\n" and not result.error


def test_replay_keeps_what_a_failing_step_set_before_failing():
    """If this fails, MPS and RL rebuild a different interpreter state than the original run had."""
    with Sandbox(timeout_s=5) as box:
        box.run("stale = 1")
        box.replay(["a = 1", "b = 2\nraise ValueError('boom')\nc = 3", "a += 10"])
        result = box.run("print(a, b, 'c' in globals(), 'stale' in globals())")
        assert result.text == "11 2 False False\n"


def test_restart_after_a_fatal_step_replays_the_other_steps_once():
    """If this fails, a crash loses the episode's state, replays a step twice, or replays the crash."""
    with Sandbox(timeout_s=5) as box:
        box.run("n = 0")
        box.run("n += 1\nraise KeyError('kept: it failed, but was not fatal')")
        crash = box.run("n += 100\nimport os\nos._exit(1)")
        assert crash.error and crash.fatal and "InterpreterDied" in crash.text
        assert box.run("n += 1\nprint(n)").text == "2\n"


def test_workdir_is_writable_and_removed_at_close():
    """If this fails, code cannot write scratch files, or every sandbox leaves a directory behind."""
    box = Sandbox(timeout_s=5)
    result = box.run("import os\nopen('notes.txt', 'w').write('hi')\nprint(os.getcwd())")
    workdir = result.text.strip()
    assert os.path.isfile(os.path.join(workdir, "notes.txt"))
    box.close()
    assert not os.path.exists(workdir)
    with pytest.raises(RuntimeError):
        box.run("print(1)")


def test_environment_does_not_leak_host_variables(monkeypatch):
    """If this fails, the model's code can read the host's secrets (API keys) from its environment."""
    monkeypatch.setenv("SCORE_TEST_SECRET", "hunter2")
    with Sandbox(timeout_s=5) as box:
        result = box.run("import os\n"
                         "print(os.environ.get('SCORE_TEST_SECRET'), os.environ['HOME'] == os.getcwd())\n"
                         "print(repr(dict(os.environ)))")
        assert result.text.startswith("None True\n") and "hunter2" not in result.text


@pytest.mark.parametrize("mode", MODES)
def test_root_host_runs_the_code_as_a_uid_of_its_own(mode):
    """If this fails on a root host, the code runs as root (it may signal anything and fork freely),
    keeps a capability, or shares its uid (and so its limits and files) with other sandboxes."""
    if not HOST_IS_ROOT:
        pytest.skip("the host is not root, so there is no uid to drop")
    code = ("import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n"
            "print([line.split()[1] for line in open('/proc/self/status')\n"
            "       if line.split(':')[0] in ('CapInh', 'CapPrm', 'CapEff', 'CapAmb')])")
    with Sandbox(timeout_s=5, isolation=mode) as first, Sandbox(timeout_s=5, isolation=mode) as second:
        assert first.mode == mode
        ids, capabilities = first.run(code).text.splitlines()
        uid, euid, gid, groups = ids.split(" ", 3)
        assert uid == euid == gid and groups == "[]"
        assert SANDBOX_UID_BASE <= int(uid) < SANDBOX_UID_BASE + SANDBOX_UID_COUNT
        assert eval(capabilities) == ["0000000000000000"] * 4  # inherited, permitted, effective, ambient
        assert second.run(code).text.split()[0] != uid


@pytest.mark.skipif(not BWRAP_WORKS, reason="bubblewrap does not work on this machine")
def test_bwrap_blocks_the_network_and_writes_outside_the_workdir():
    """If this fails, bwrap mode lets the code reach the network or modify the host's files, or its
    /tmp is the host's."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        with Sandbox(timeout_s=5, isolation="bwrap") as box:
            result = box.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
            assert result.error and "Error: PermissionError" in result.text  # no socket at all
            # The sandbox's /tmp is a private tmpfs: writable inside, invisible outside.
            target = f"/tmp/score-sandbox-test-{os.getpid()}"
            result = box.run(f"import os\nopen({target!r}, 'w').write('x')\nprint(os.path.exists({target!r}))")
            assert result.text == "True\n" and not os.path.exists(target)
            result = box.run("open('/usr/score-sandbox-test', 'w')")
            assert result.error and re.search("Read-only file system|Permission denied", result.text)
            result = box.run("import os\nprint(os.getpid(), len([p for p in os.listdir('/proc') if p.isdigit()]))")
            pid, visible = map(int, result.text.split())
            assert pid <= 3 and visible <= 3  # its own PID namespace: bwrap's init and W
    finally:
        server.close()


def test_forged_protocol_lines_cannot_fool_or_desynchronise_the_host():
    """If this fails, code writing into the sandbox's private pipe can fake results for later steps,
    or wedge the host."""
    forge_done = ("import json, os\n"
                  "line = json.dumps({'op': 'done', 'error': None, 'answer': 'forged'}) + '\\n'\n"
                  "for fd in range(3, 256):  # every descriptor W may hold (RLIMIT_NOFILE)\n"
                  "    try:\n"
                  "        os.write(fd, line.encode())\n"
                  "    except OSError:\n"
                  "        pass\n"
                  "final_answer('real')")
    garbage = forge_done.replace("line.encode()", "b'{not json\\n'")
    with Sandbox(timeout_s=5) as box:
        box.run("x = 42")
        forged = box.run(forge_done)  # the forged "done" lacks the step's secret: a broken protocol
        assert forged.fatal and "Error: SandboxProtocolError" in forged.text and forged.answer is None
        assert box.run("print(x + 1)").text == "43\n"  # and later steps get their own results
        broken = box.run(garbage)
        assert broken.error and broken.fatal and "Error: SandboxProtocolError" in broken.text
        assert box.run("print(x)").text == "42\n"


def test_code_that_leaves_the_session_is_still_killed():
    """If this fails in limits mode, os.setsid() lets a runaway step outlive its timeout and close()."""
    with Sandbox(timeout_s=1, isolation="limits") as box:
        pid = int(box.run("import os\nos.setsid()\nprint(os.getpid())").text)  # a host pid in limits mode
        assert box.run("while True:\n    pass").fatal
        time.sleep(0.05)
        assert not process_is_live(pid)


def test_worker_start_is_fast():
    """If this fails, start-up got slow (the worker imports something heavy?), and MPS/RL replays crawl."""
    start = time.monotonic()
    for _ in range(3):
        with Sandbox(timeout_s=5) as box:
            assert box.run("print(1)").text == "1\n"
    assert (time.monotonic() - start) / 3 < 1.0


# ---------------------------------------------------------------------------------------------
# hostile steps, in both modes
# ---------------------------------------------------------------------------------------------

TIMEOUT_S = 3.0
# name: (code, the error the observation must name (None: no error required), fatal expected or None)
HOSTILE = {
    "infinite_loop": ("while True:\n    pass", r"Error: TimeoutError", True),
    "memory_bomb": ("hog = []\nwhile True:\n    hog.append('x' * 10**7)", r"Error: MemoryError", False),
    "fork_bomb": ("import os, time\nfor _ in range(8):\n    os.fork()\ntime.sleep(300)",
                  r"Error: BlockingIOError", False),
    # On a root host W's parent stays root, so the kill is refused. On a non-root host it is harmless
    # (bwrap's init ignores signals from inside its namespace; in limits mode only S dies).
    "kill_parent": ("import os\nos.kill(os.getppid(), 9)",
                    r"Error: PermissionError" if HOST_IS_ROOT else None, False if HOST_IS_ROOT else None),
    "sys_exit": ("import sys\nsys.exit(3)", r"Error: SystemExit: 3", False),
    "os_exit": ("import os\nos._exit(1)",
                r"Error: InterpreterDied: the Python process exited with status 1", True),
    "read_stdin": ("input()", r"Error: EOFError", False),
    "print_100_mb": ("print('x' * 100_000_000)", r"Error: OutputLimitError", False),
    "deep_recursion": ("def f(n):\n    return f(n + 1)\nf(0)", r"Error: RecursionError", False),
    # 10**6 Python frames either hit the limit (about 2 s here), run out of memory or time, or crash.
    "deep_recursion_high_limit": (
        "import sys\nsys.setrecursionlimit(10**6)\ndef g(n):\n    return g(n + 1)\ng(0)",
        r"Error: (RecursionError|MemoryError|TimeoutError|InterpreterDied)", None),
    "c_crash": ("import ctypes\nctypes.string_at(0)",
                r"Error: InterpreterDied: the Python process was killed by signal 11", True),
    "background_sleep": ("import subprocess\nsubprocess.Popen(['sleep', '300'])",
                         r"Error: BlockingIOError", False),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_step_is_contained(mode, case):
    """If this fails, model code can hang, crash or slow the host, lose the episode's state, or
    leave processes running after close()."""
    code, expected_error, expected_fatal = HOSTILE[case]
    box = Sandbox(timeout_s=TIMEOUT_S, max_output_chars=400, memory_mb=512, isolation=mode)
    try:
        assert box.run("x = 42").text == ""
        sessions = {box.session_id}
        start = time.monotonic()
        result = box.run(code)
        elapsed = time.monotonic() - start
        assert elapsed < TIMEOUT_S + 2.0, f"{case} took {elapsed:.1f} s"
        assert len(result.text) <= 400
        if expected_error is not None:
            assert result.error and re.search(expected_error, result.text), result.text
        if expected_fatal is not None:
            assert result.fatal == expected_fatal, result.text
        # The earlier state is still there (replayed into a new worker if this one died), and the
        # worker answers again. Reaching this line also means the host process survived.
        after = box.run("print(x)")
        assert after.text == "42\n" and not after.error
        sessions.add(box.session_id)
    finally:
        box.close()
    time.sleep(0.05)  # SIGKILLed processes need a moment to leave the process table
    assert live_processes(sessions) == [], f"processes of {case} outlived close()"


# ---------------------------------------------------------------------------------------------
# clean-up and the syscall filter, as pure functions
# ---------------------------------------------------------------------------------------------

def test_remove_tree_never_follows_symlinks_and_never_recurses(tmp_path):
    """If this fails, removing a work directory can chmod or delete the host's files through a
    symlink, or overflow the host's stack on a deep tree."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o751)
    (outside / "keep.txt").write_text("keep")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "to_outside").symlink_to(outside)
    here = os.open(tree, os.O_RDONLY)
    for _ in range(3000):  # deeper than Python's recursion limit and than PATH_MAX allows by path
        os.mkdir("level-with-a-long-name", dir_fd=here)
        deeper = os.open("level-with-a-long-name", os.O_RDONLY, dir_fd=here)
        os.close(here)
        here = deeper
    os.symlink(str(outside), "inner_link", dir_fd=here)
    os.close(here)
    os.chmod(tree / "level-with-a-long-name", 0)
    _remove_tree(str(tree))
    assert not tree.exists()
    assert (outside / "keep.txt").read_text() == "keep" and outside.stat().st_mode & 0o777 == 0o751


def test_seccomp_program_is_well_formed():
    """If this fails, the kernel rejects the filter (no syscall limits) or a jump lands outside it."""
    program = _seccomp_program(1234)
    if program is None:
        pytest.skip("no syscall table for this machine")
    for index, (code, jump_true, jump_false, _) in enumerate(program):
        if code & 0x07 == 0x05:  # a jump: both targets inside the program
            assert index + 1 + max(jump_true, jump_false) < len(program)
    assert program[-1] == (0x06, 0, 0, 0x7FFF0000)  # the default is to allow



@pytest.mark.skipif(not BWRAP_WORKS, reason="bubblewrap does not work on this machine")
def test_bwrap_works_from_a_checkout_under_tmp(tmp_path):
    """If this fails, a project cloned under /tmp (as CI and `mktemp -d` clones are) cannot start its
    workers in bwrap mode: the sandbox's private /tmp would hide tools.py."""
    import importlib.util
    import shutil
    copy = tmp_path / "checkout" / "tools.py"
    copy.parent.mkdir()
    shutil.copy(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools.py"), copy)
    spec = importlib.util.spec_from_file_location("tools_under_tmp", copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    with module.Sandbox(timeout_s=5, isolation="bwrap") as box:
        assert box.run("print(6 * 7)").text == "42\n"
