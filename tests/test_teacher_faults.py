"""Teacher faults are not verdicts: a teacher server that fails is asked again with backoff, one that
stays down raises TeacherUnavailable (one line), MPS records nothing for the episode in flight and a
rerun finishes it; and check_teacher finds a wrong teacher before any work, in seconds.

    python -m pytest tests/test_teacher_faults.py -q
"""
import http.server
import json
import socket
import threading
import time

import pytest

from agent import RolloutConfig
from environment.tasks import RefStep, Task
from mps import MPSConfig, run_mps
from runs import append_jsonl, read_jsonl
from student import ScriptedStudent
from teacher import TeacherConfig, TeacherError, TeacherStats, TeacherUnavailable, Verdict, check_teacher, make_teacher
from teacher_backends import TEACHER_PRESETS, URLTeacher, cached_preset, preset_files

FAST = TeacherConfig(timeout_s=2.0, retry_delays_s=(0.0, 0.0))  # 3 attempts, no waiting: tests stay quick

VERDICT = json.dumps({"analysis": "wrong factor", "first_error_step": 2, "suggestion": "multiply 6 by 7"})
STEP = "<thought>multiply</thought>\n<code>\nx = 6 * 7\nprint(x)\n"  # the stop string </code> is cut, as servers do


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlakyServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers verdicts (blame step 2) and replacement
    steps, and fails on demand: the first `fail_first` POSTs, or every POST after the first `healthy`
    ones until recover(); `how` is "500", "503", "429", "drop" (close without a reply) or "slow".
    stop() / start() take it down and up on the same port (connection refused in between)."""

    def __init__(self, fail_first: int = 0, how: str = "500", healthy: int | None = None, get_status: int = 200):
        self.fail_first, self.how, self.healthy, self.get_status = fail_first, how, healthy, get_status
        self.posts, self.failed = [], 0  # every POST body; how many of them were failed on purpose
        self.port, self.httpd = _free_port(), None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def failing(self) -> bool:
        n = len(self.posts)  # this request is number n (1-based)
        return n <= self.fail_first or (self.healthy is not None and n > self.healthy)

    def recover(self) -> None:
        self.fail_first, self.healthy = 0, None

    def start(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models" and server.get_status == 200:
                    self.send(200, {"object": "list", "data": [{"id": "fake-teacher"}]})
                else:
                    self.send(server.get_status if server.get_status != 200 else 404, {"error": "no such path"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.posts.append(body)
                if server.failing():
                    server.failed += 1
                    if server.how == "drop":  # the connection closes without a status line
                        self.close_connection = True
                        return
                    if server.how == "slow":  # past the client's timeout
                        time.sleep(1.0)
                        return
                    self.send(int(server.how), {"error": "overloaded"})
                    return
                question = body["messages"][-1]["content"]
                text = VERDICT if "first_error_step" in question else STEP if "Now write step" in question else ""
                choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                self.send(200, {"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.handle_error = lambda *args: None  # a client that gave up (the timeout case)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    started = []
    yield lambda **kwargs: started.append(FlakyServer(**kwargs)) or started[-1]
    for server in started:
        server.stop()


def _task(i: int) -> Task:
    return Task(id=f"toy-{i}", task_set="toy", question=f"What is 6 times 7? (#{i})", answer="42", grader="numeric",
                solution=(RefStep("multiply"),))


def _ask_verdict(teacher):
    """One verdict request about a wrong two-step episode (the server's reply blames step 2)."""
    from agent import Step, Trajectory
    trajectory = Trajectory(task_id="toy-0", task_set="toy", question=_task(0).question, reference_answer="42", seed=0)
    trajectory.steps = [Step(1, "plan", "student", "<first_thought>p</first_thought>", thought="p"),
                        Step(2, "action", "student", "<code>final_answer(48)</code>", code="final_answer(48)",
                             observation="", final_answer="48")]
    return teacher.verdict(trajectory, "42")


# ---------------------------------------------------------------------------------------------- (a) (b) the URL teacher


@pytest.mark.parametrize("how", ["500", "503", "429", "drop"])
def test_a_server_that_recovers_within_the_retries_gives_its_verdict(servers, how):
    """A server that fails twice (HTTP 5xx, 429, or a dropped connection), then answers: the request is
    sent again and the verdict is the server's, with no unusable-reply retry and no failure counted. If
    this broke, a server restart or a short overload would tag episodes hard."""
    server = servers(fail_first=2, how=how)
    teacher = URLTeacher(server.url, model="fake", config=FAST)
    verdict = _ask_verdict(teacher)
    assert verdict == Verdict(2, "wrong factor", "multiply 6 by 7")
    assert len(server.posts) == 3 and server.failed == 2
    assert server.posts[0] == server.posts[2]  # the same request resent: same seed, same body
    s = teacher.stats
    assert (s.calls, s.resent, s.retries, s.failures, s.backend_errors) == (1, 2, 0, 0, 0)


def test_a_refused_connection_is_waited_out_with_backoff(servers):
    """The server is down (connection refused) and comes back 0.2 s later, inside the backoff waits:
    the verdict arrives. If this broke, a teacher server restarted mid-phase would stop MPS."""
    server = servers()
    server.stop()
    threading.Timer(0.2, server.start).start()
    teacher = URLTeacher(server.url, model="fake", config=TeacherConfig(retry_delays_s=(0.3, 0.6, 1.2, 2.4)))
    began = time.perf_counter()
    assert _ask_verdict(teacher).first_error_step == 2
    assert time.perf_counter() - began >= 0.3 and teacher.stats.resent >= 1 and len(server.posts) == 1


@pytest.mark.parametrize("how,words", [("500", "HTTP 500"), ("drop", "remote end closed connection"),
                                       ("slow", "timed out")])
def test_a_server_that_stays_down_raises_one_line(servers, how, words):
    """A server that keeps failing: exactly 1 + len(retry_delays_s) attempts, then TeacherUnavailable
    (a TeacherError: score.py prints it and exits 2) in one line naming the URL and what failed; not a
    None verdict, so nothing is tagged hard. If this broke, MPS would mark every episode hard (the bug)."""
    server = servers(fail_first=99, how=how)
    config = TeacherConfig(timeout_s=0.3, retry_delays_s=(0.0, 0.0)) if how == "slow" else FAST
    teacher = URLTeacher(server.url, model="fake", config=config)
    with pytest.raises(TeacherUnavailable) as error:
        _ask_verdict(teacher)
    message = str(error.value)
    assert "\n" not in message and server.url + "/v1" in message and words.lower() in message.lower(), message
    assert "3 attempts" in message and len(server.posts) == 3
    assert isinstance(error.value, TeacherError)
    s = teacher.stats
    assert (s.resent, s.backend_errors, s.failures, s.retries, s.calls) == (2, 1, 0, 0, 0)


def test_nobody_listening_and_the_backoff_delays(servers):
    """Nobody listens: 'connection refused' after the configured waits (0.1 + 0.2 s, not the default
    7.5 s); the delays really are waited. If this broke, the backoff would hammer a restarting server
    or wait far longer than configured."""
    url = f"http://127.0.0.1:{_free_port()}"
    teacher = URLTeacher(url, model="fake", config=TeacherConfig(retry_delays_s=(0.1, 0.2)))
    began = time.perf_counter()
    with pytest.raises(TeacherUnavailable, match="connection refused"):
        _ask_verdict(teacher)
    assert 0.3 <= time.perf_counter() - began < 3.0 and teacher.stats.resent == 2


def test_a_wrong_endpoint_or_model_is_a_fault_at_once(servers):
    """HTTP 404 to a chat request (no such endpoint or model: vLLM's answer to a wrong --teacher name)
    would come back for every request: TeacherUnavailable at once, no resend. If this broke, a typo in
    the model name would tag every episode hard."""
    server = servers(fail_first=99, how="404")
    teacher = URLTeacher(server.url, model="no-such-model", config=FAST)
    with pytest.raises(TeacherUnavailable, match="HTTP 404"):
        _ask_verdict(teacher)
    assert len(server.posts) == 1 and teacher.stats.resent == 0


def test_a_server_down_at_start_is_found_when_the_teacher_is_made():
    """make_teacher with --teacher-url and no model name asks the server for its model: down, that is
    TeacherUnavailable now (the model name is in every cache key, a guessed one would miss the cache)."""
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(TeacherUnavailable, match="does not answer"):
        make_teacher("reference", url=url, config=FAST)
    with pytest.raises(TeacherError, match="not an http"):
        make_teacher("", url="localhost:8000", config=FAST)


def test_teacher_stats_read_as_one_line():
    """score.py prints `teacher: {teacher.stats}`: one readable line; the fault counters only when not 0."""
    stats = TeacherStats(calls=12, prompt_tokens=3400, completion_tokens=800, seconds=41.3, cache_hits=5)
    assert str(stats) == "12 calls, 3,400 prompt + 800 completion tokens, 41 s, 5 cache hits, 0 retries, 0 failures"
    stats.backend_errors, stats.resent = 1, 4
    assert str(stats).endswith("0 failures, 1 backend errors, 4 requests resent")
    assert f"teacher: {stats}".count("\n") == 0


# ---------------------------------------------------------------------------------------------- (c) MPS


WRONG = ["<first_thought>multiply</first_thought>", "<code>leak = 1\nx = 6 * 8\nprint(x)</code>",
         "<code>final_answer(x if 'leak' not in globals() else -1)</code>"]  # wrong at step 2; right once corrected
ALONE = ["<first_thought>multiply</first_thought>", "<code>final_answer(6 * 7)</code>"]
KINDS = ["wrong", "alone", "wrong", "wrong", "alone", "wrong"]  # toy-0 .. toy-5, batches of 3 as score.py's


def _student(tokenizer):
    def respond(prompt, seed):
        i = next(i for i in range(len(KINDS)) if f"(#{i})" in prompt)
        turns = WRONG if KINDS[i] == "wrong" else ALONE
        return turns[min(prompt.count("<|im_start|>assistant") - 1, len(turns) - 1)]
    return ScriptedStudent(tokenizer, respond)


def _phase(tokenizer, teacher, tasks, path, batch_size=3):
    """score.py's phase_mps in small: skip the task ids already in mps.jsonl, append each final episode."""
    from tools import Sandbox
    done = {r["task_id"] for r in read_jsonl(path)} if path.exists() else set()
    todo = [t for t in tasks if t.id not in done]
    for i in range(0, len(todo), batch_size):
        run_mps(_student(tokenizer), teacher, todo[i:i + batch_size], {t.id: "sft" for t in tasks},
                RolloutConfig(max_steps=5), MPSConfig(), lambda corpus: Sandbox(corpus=corpus, timeout_s=5),
                lambda t: append_jsonl(path, t.to_dict()))


# healthy = how many POSTs succeed before the server goes down. Each wrong episode takes 2 (verdict, step);
# batch 1 is toy-0..2, batch 2 toy-3..5. 2: down at toy-2's verdict, while toy-0 awaits its next round;
# 4: down at toy-3's verdict (batch 2); 5: down at toy-3's replacement step, after its verdict.
@pytest.mark.parametrize("healthy,recorded", [(2, {"toy-1"}), (4, {"toy-0", "toy-1", "toy-2", "toy-4"}),
                                              (5, {"toy-0", "toy-1", "toy-2", "toy-4"})])
def test_mps_teacher_down_midway_records_nothing_half_made_and_a_rerun_completes(tokenizer, tmp_path, servers,
                                                                                 healthy, recorded):
    """The teacher server goes down in the middle of MPS: the phase raises TeacherUnavailable; mps.jsonl
    holds exactly the episodes finished before (or in the same round without the teacher: toy-1, toy-4),
    none tagged hard and none half-corrected; the teacher is not asked again once down. After the server
    recovers, the same phase does the rest (the cached calls are not asked again), each task once, all
    corrected. If this broke, a server outage would turn into 'hard' episodes that a rerun never retries."""
    tasks = [_task(i) for i in range(len(KINDS))]
    path, cache = tmp_path / "mps.jsonl", tmp_path / "teacher_cache.jsonl"
    server = servers(healthy=healthy, how="503")
    teacher = make_teacher("", tasks, cache_path=cache, url=server.url, config=FAST)
    with pytest.raises(TeacherUnavailable, match="HTTP 503"):
        _phase(tokenizer, teacher, tasks, path)
    first = read_jsonl(path)
    assert {r["task_id"] for r in first} == recorded and len(first) == len(recorded)
    assert not any(r["hard"] for r in first) and all(r["correct"] for r in first)
    assert all(c["valid"] and c["teacher_step"] for r in first for c in r["corrections"])
    assert len(server.posts) == healthy + 3  # the failing request, 3 attempts; then the teacher is left alone

    server.recover()
    posts_before = len(server.posts)
    again = make_teacher("", tasks, cache_path=cache, url=server.url, config=FAST)  # a new process, same cache
    _phase(tokenizer, again, tasks, path)
    records = read_jsonl(path)
    ids = [r["task_id"] for r in records]
    assert sorted(ids) == [t.id for t in tasks] and len(ids) == len(set(ids))  # every task once
    assert not any(r["hard"] for r in records) and all(r["correct"] for r in records)
    for r in records:  # each wrong episode corrected once, validly, at step 2
        kind = KINDS[int(r["task_id"].split("-")[1])]
        assert [(c["k"], c["valid"]) for c in r["corrections"]] == ([(2, True)] if kind == "wrong" else [])
    # The rerun asks only what was not answered before: the calls that succeeded came from the cache.
    assert again.stats.cache_hits == healthy - 2 * sum(KINDS[int(i.split("-")[1])] == "wrong" for i in recorded)
    assert len(server.posts) - posts_before == 2 * KINDS.count("wrong") - healthy


# ---------------------------------------------------------------------------------------------- (d) check_teacher


def test_check_teacher_files(tmp_path):
    """A missing .gguf, a directory, a file that is not GGUF, a multi-part model with a part missing:
    each one line; a file that starts with the GGUF magic passes (it is not loaded). If this broke,
    --teacher /tmp/nope.gguf would be found only after minutes of student work."""
    with pytest.raises(TeacherError, match="does not exist"):
        check_teacher(str(tmp_path / "nope.gguf"), None)
    with pytest.raises(TeacherError, match="not a file"):
        check_teacher(str(tmp_path), None)
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(TeacherError, match="is not a GGUF file") as error:
        check_teacher(str(fake), None)
    assert "\n" not in str(error.value)
    fake.write_bytes(b"GGUF" + bytes(60))
    assert check_teacher(str(fake), None) is None
    first = tmp_path / "big-00001-of-00003.gguf"
    first.write_bytes(b"GGUF" + bytes(60))
    (tmp_path / "big-00003-of-00003.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(TeacherError, match=r"part 1 of 3, but 1 part\(s\) are not beside it \(the first: big-00002"):
        check_teacher(str(first), None)


def test_check_teacher_names():
    """reference and the offline preset pass; an unknown name lists the choices."""
    assert check_teacher("reference", None) is None
    assert check_teacher("smol-135m-q4", None) is None
    with pytest.raises(TeacherError) as error:
        check_teacher("qwen-9000", None)
    assert "unknown teacher 'qwen-9000'" in str(error.value) and all(p in str(error.value) for p in TEACHER_PRESETS)


def test_check_teacher_urls(servers):
    """A URL nobody listens on fails in well under 2 s with the one line the user needs; a live server
    passes; a server that fails, or answers 404 everywhere (not OpenAI-compatible), says so."""
    url = f"http://127.0.0.1:{_free_port()}"
    began = time.perf_counter()
    with pytest.raises(TeacherError) as error:
        check_teacher("reference", url)
    assert time.perf_counter() - began < 2.0
    assert str(error.value) == (f"teacher server {url}/v1 does not answer (connection refused): start it or drop "
                                "--teacher-url")
    assert check_teacher("reference", servers().url) is None
    assert check_teacher("ignored-model-name", servers().url + "/v1/") is None
    with pytest.raises(TeacherError, match=r"answers but fails \(HTTP 503 on /v1/models\)"):
        check_teacher("reference", servers(get_status=503).url)
    with pytest.raises(TeacherError, match="not as an OpenAI-compatible server"):
        check_teacher("reference", servers(get_status=404).url)
    with pytest.raises(TeacherError, match="not an http"):
        check_teacher("reference", "localhost:8000")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and the hub offline unless a test says otherwise."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def _cache_preset(hub, spec):
    """Lay a preset's files into a Hugging Face cache the way the hub library does (refs/main -> snapshot)."""
    repo, files = preset_files(spec)
    folder = hub / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    for name in files:
        (folder / "snapshots" / "abc123" / name).write_bytes(b"GGUF" + bytes(60))
    return folder / "snapshots" / "abc123" / files[0]


def test_check_teacher_preset_offline_is_fast(empty_hub):
    """--teacher qwen-72b-q4 with HF_HUB_OFFLINE=1 and nothing cached: one line at once that says the
    hub is offline and how many of the 12 parts are missing (no network, no hub library retries)."""
    began = time.perf_counter()
    with pytest.raises(TeacherError) as error:
        check_teacher("qwen-72b-q4", None)
    assert time.perf_counter() - began < 2.0
    message = str(error.value)
    assert "HF_HUB_OFFLINE=1" in message and "12 of 12" in message and "--teacher /path/to/file.gguf" in message
    with pytest.raises(TeacherError, match="HF_HUB_OFFLINE=1"):  # make_teacher says the same, before any load
        make_teacher("qwen-72b-q4")


def test_a_cached_preset_passes_offline_and_loads_from_the_cache(empty_hub, monkeypatch):
    """Every part in the cache: check_teacher passes offline, and the teacher loads the cached first part
    directly (Llama.from_pretrained would list the repo on the hub first and fail offline). One part
    missing: not cached. If this broke, a downloaded 72B teacher could not be used offline."""
    import llama_cpp
    first = _cache_preset(empty_hub, "qwen-7b-q4")
    assert cached_preset("qwen-7b-q4") == (str(first), 0)
    assert check_teacher("qwen-7b-q4", None) is None
    loaded = []

    class FakeLlama:
        def __init__(self, model_path, **kwargs):
            loaded.append(model_path)

        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the hub was asked for a cached preset")

    monkeypatch.setattr(llama_cpp, "Llama", FakeLlama)
    make_teacher("qwen-7b-q4")
    assert loaded == [str(first)]
    (first.parent / preset_files("qwen-7b-q4")[1][1]).unlink()
    assert cached_preset("qwen-7b-q4") == (None, 1)


def test_check_teacher_preset_without_network_is_fast(empty_hub, monkeypatch):
    """Not offline by setting, but the hub does not answer (here: a closed port as the endpoint): one
    line in seconds that names the hub and the way out, instead of the download's long retries."""
    from huggingface_hub import constants
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    began = time.perf_counter()
    with pytest.raises(TeacherError) as error:
        check_teacher("qwen-32b-q4", None)
    assert time.perf_counter() - began < 5.0
    message = str(error.value)
    assert "\n" not in message and constants.ENDPOINT in message and "does not answer" in message
    assert "--teacher /path/to/file.gguf" in message
