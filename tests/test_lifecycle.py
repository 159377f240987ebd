"""How `corestream run` starts and stops: SIGTERM at any moment of start-up exits 0; a stop completes within
batch.shutdown_timeout_s even with Elasticsearch blackholed, committing nothing unwritten; a stalled processor
exits with status 3; no broker: one clear line, throttled library repeats, not ready; --log-level anywhere."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from config.cli import build_parser, run_cli
from config.kafka_events import KafkaEvents
from config.settings import Settings, load_settings
from streaming.kafka import create_topics
from streaming.lifecycle import EXIT_STALLED
from tests.es_fault_proxy import EsFaultProxy
from tests.helpers_stream import (
    committed_offsets,
    es_count,
    produce,
    record_messages,
    sample_records,
    stream_settings,
    subprocess_env,
    tiny_model_dir,
    wait_for,
)
from tests.servers import black_hole

RUN = [sys.executable, "-m", "streaming.cli", "run"]
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def _catches_sigterm(pid: int) -> bool:
    """The process has installed its SIGTERM handler (Linux: SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & SIGTERM_BIT)


@contextmanager
def _spawn(settings: Settings, log_path: Path, **env: str) -> Iterator[subprocess.Popen]:
    with log_path.open("w") as log:
        proc = subprocess.Popen(RUN, env={**subprocess_env(settings), **env}, stdout=subprocess.PIPE, stderr=log,
                                text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _stop(proc: subprocess.Popen, timeout: float) -> tuple[int, float, str]:
    """SIGTERM; (exit status, seconds to exit, stdout)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout + 30)
    return proc.returncode, time.monotonic() - started, out


def _offline_settings(**overrides) -> Settings:
    """Settings whose broker port has nothing listening."""
    base = {"kafka": {"bootstrap_servers": f"127.0.0.1:{_free_port()}", "input_topics": ["t.in"],
                      "output_topic": "t.out", "group_id": "g"},
            "model": {"model": str(tiny_model_dir()), "device": "cpu", "reload_interval_s": 0},
            "batch": {"shutdown_timeout_s": 10},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": _free_port()}, "log_format": "json"}
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(**base)


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"raw": line})
    return out


# ----------------------------------------------------------------------------- no broker: say it once


def test_unreachable_broker_is_one_warning_then_reminders_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    events = KafkaEvents(remind_s=60, clock=lambda: now[0])

    class Error:  # the two methods of confluent_kafka.KafkaError that KafkaEvents reads
        def __init__(self, name: str, text: str) -> None:
            self._name, self._text = name, text

        def name(self) -> str:
            return self._name

        def str(self) -> str:
            return self._text

        def fatal(self) -> bool:
            return False

    refused = Error("_TRANSPORT", "k1:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: Connection refused "
                                  "(after 0ms in state CONNECT, 3 identical error(s) suppressed)")
    caplog.set_level(logging.DEBUG)
    for i in range(500):
        now[0] = i * 0.1
        events.error(refused)
        events.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", refused.str())
    events.error(Error("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0]
    assert line.name == "corestream.kafka" and line.broker == "k1:9092" and line.error == "Connection refused"
    assert "unreachable" in line.getMessage() and "still retrying" in line.getMessage() and line.since
    assert events.status()["all_down"] and set(events.status()["unreachable"]) == {"k1:9092"}

    caplog.clear()
    now[0] = 61.0
    events.error(refused)  # a minute on: one reminder, with the count of attempts since
    (reminder,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "still unreachable" in reminder.getMessage() and reminder.failed_attempts == 501

    caplog.clear()
    stats = {"brokers": {"k1:9092/bootstrap": {"state": "UP"}}}
    events.stats(json.dumps(stats))
    (back,) = caplog.records
    assert back.levelno == logging.INFO and "reachable again" in back.getMessage()
    assert events.status() == {"all_down": False, "unreachable": {}}

    caplog.clear()  # any other library line: the first shown, its repeats (numbers aside) counted within a minute
    for i in range(100):
        events.log(30, "%s [%s] %s", "REQTMOUT", "rdkafka#producer-2", f"Timed out {i} in-flight requests")
    now[0] = 200.0
    events.log(30, "%s [%s] %s", "REQTMOUT", "rdkafka#producer-2", "Timed out 7 in-flight requests")
    shown = [r.getMessage() for r in caplog.records if r.name == "librdkafka"]
    assert shown == ["REQTMOUT: Timed out 0 in-flight requests",
                     "REQTMOUT: Timed out 7 in-flight requests (99 similar lines suppressed)"]

    caplog.clear()  # a new processor in the same process forgets what earlier clients reported, silently
    events.error(refused)
    events.error(Error("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
    assert events.status()["all_down"]
    events.forget()
    assert events.status() == {"all_down": False, "unreachable": {}}
    assert not [r for r in caplog.records if "reachable again" in r.getMessage()]


def test_topics_create_without_a_broker_logs_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    from config.logging import setup_logging

    settings = _offline_settings()
    setup_logging("INFO", "json")
    with pytest.raises(Exception, match="[Tt]imed out|no answer"):
        create_topics(settings, timeout=6)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines[:5]  # not one line per connection attempt
    (line,) = _json_lines(err)
    assert line["logger"] == "corestream.kafka" and line["broker"] == settings.kafka.bootstrap_servers
    assert "unreachable" in line["msg"] and "still retrying" in line["msg"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_without_a_broker_says_so_once_is_not_ready_and_stops_cleanly(tmp_path: Path) -> None:
    settings = _offline_settings()
    base = f"http://127.0.0.1:{settings.metrics.port}"
    with _spawn(settings, tmp_path / "run.log") as proc:
        wait_for(lambda: _get(base + "/readyz")[1].get("kafka", {}).get("all_down"), 30,
                 "/readyz to report the broker down", interval=0.5)
        time.sleep(10)  # librdkafka tries about 20 times a second meanwhile
        status, body = _get(base + "/readyz")
        assert status == 503 and body["assigned"] == [] and body["kafka"]["all_down"]
        assert list(body["kafka"]["unreachable"]) == [settings.kafka.bootstrap_servers]
        assert _get(base + "/healthz")[0] == 200  # alive: nothing waits to be committed
        code, took, out = _stop(proc, settings.batch.shutdown_timeout_s)
    log = (tmp_path / "run.log").read_text()
    assert code == 0 and took <= settings.batch.shutdown_timeout_s, (code, took, log[-2000:])
    assert json.loads(out.splitlines()[-1])["event"] == "processor_stopped"
    said = [line for line in _json_lines(log) if "unreachable" in str(line)]
    assert len(said) == 1 and said[0]["logger"] == "corestream.kafka", said[:5]
    assert sum("Connection refused" in line for line in log.splitlines()) == 1, log[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_broker_that_comes_up_later_is_announced_and_the_processor_gets_ready(tmp_path: Path) -> None:
    from tests.servers import NoidaServer

    broker = NoidaServer(tmp_path / "noida", services="kafka")  # its port is chosen now, it listens later
    # The topics can only be created once the broker is up; librdkafka sees a new topic at its next metadata
    # refresh (5 min by default).
    settings = _offline_settings(kafka={"bootstrap_servers": broker.bootstrap,
                                        "extra": {"topic.metadata.refresh.interval.ms": "1000"}})
    base = f"http://127.0.0.1:{settings.metrics.port}"
    log_path = tmp_path / "run.log"
    with _spawn(settings, log_path) as proc:
        try:
            wait_for(lambda: _get(base + "/readyz")[1].get("kafka", {}).get("all_down"), 30, "the broker down",
                     interval=0.5)
            broker.start()
            create_topics(settings)
            wait_for(lambda: _get(base + "/readyz")[0] == 200, 60, "ready once the broker is up",
                     detail=lambda: _get(base + "/readyz"), interval=0.5)
            code, took, _ = _stop(proc, settings.batch.shutdown_timeout_s)
        finally:
            broker.stop()
    lines = _json_lines(log_path.read_text())
    assert code == 0, lines[-10:]
    about = [line["msg"] for line in lines if line.get("logger") == "corestream.kafka"]
    assert len(about) == 2 and "unreachable" in about[0] and "reachable again" in about[1], about


# ----------------------------------------------------------------------------- the lifecycle's rules


def test_signals_stop_then_abort_and_a_stall_requests_status_3() -> None:
    import os

    from streaming.lifecycle import Lifecycle, StartupInterrupted

    made: list[Lifecycle] = []

    def lifecycle_() -> Lifecycle:
        made.append(Lifecycle())
        made[-1].catch_signals()
        made[-1].starting(shutdown_timeout_s=60)
        return made[-1]

    aborted: list[bool] = []
    try:
        lifecycle = lifecycle_()
        with pytest.raises(StartupInterrupted):  # during start-up: interrupted at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert lifecycle.stop.is_set() and lifecycle.status == 0 and 59 < lifecycle.time_left() <= 60

        lifecycle = lifecycle_()
        lifecycle.running(abort=lambda: aborted.append(True))
        os.kill(os.getpid(), signal.SIGTERM)  # running: the first asks for a graceful stop ...
        assert lifecycle.stop.wait(5) and not aborted
        os.kill(os.getpid(), signal.SIGINT)  # ... the second stops at once
        wait_for(lambda: aborted, 5, "the abort")

        lifecycle = lifecycle_()
        lifecycle.watch_stall(lambda: 7.5, limit_s=5)
        assert lifecycle.stop.wait(10) and lifecycle.status == EXIT_STALLED
    finally:
        for lifecycle in made:  # never let a hard-exit timer end the test process
            if lifecycle._hard_exit is not None:
                lifecycle._hard_exit.cancel()
        made[-1].release_signals()


# ----------------------------------------------------------------------------- SIGTERM during start-up


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_while_importing_exits_0(tmp_path: Path) -> None:
    settings = _offline_settings()
    with _spawn(settings, tmp_path / "run.log") as proc:
        wait_for(lambda: _catches_sigterm(proc.pid), 30, "the handler", interval=0.005)
        code, took, _ = _stop(proc, 30)
    assert code == 0, (tmp_path / "run.log").read_text()[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_while_the_model_loads_exits_0(tmp_path: Path) -> None:
    # The model comes from a registry whose S3 endpoint accepts the connection and never answers: the process
    # is inside the model load, deterministically, when the signal comes.
    with black_hole() as (port, accepted):
        settings = _offline_settings(model={"model": "registry://demo@prod"},
                                     registry={"endpoint_url": f"http://127.0.0.1:{port}"})
        with _spawn(settings, tmp_path / "run.log", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y") as proc:
            assert accepted.wait(60), (tmp_path / "run.log").read_text()[-2000:]
            code, took, _ = _stop(proc, settings.batch.shutdown_timeout_s)
    log = (tmp_path / "run.log").read_text()
    assert code == 0 and took <= settings.batch.shutdown_timeout_s, (code, took, log[-2000:])
    assert "stopped during start-up" in log


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_as_the_consumer_joins_exits_0(noida, tmp_path: Path) -> None:
    settings = stream_settings(noida.bootstrap, batch={"shutdown_timeout_s": 10})
    log_path = tmp_path / "run.log"
    with _spawn(settings, log_path) as proc:
        wait_for(lambda: "processor started" in log_path.read_text(), 60, "the consumer", interval=0.01)
        code, took, out = _stop(proc, settings.batch.shutdown_timeout_s)
    assert code == 0 and took <= settings.batch.shutdown_timeout_s, (code, took, log_path.read_text()[-2000:])
    assert json.loads(out.splitlines()[-1])["event"] == "processor_stopped"


# ----------------------------------------------------------------------------- stop within the limit, ES blackholed


def _blackholed_run(noida, es_url: str, tmp_path: Path, **batch) -> tuple:
    proxy = EsFaultProxy(es_url).start()
    # The client would wait 30 s for each answer: only the stop deadline can end the stop in time.
    settings = stream_settings(noida.bootstrap, proxy.url, elasticsearch={"request_timeout_s": 30},
                               batch={"shutdown_timeout_s": 8, **batch})
    return proxy, settings


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_with_elasticsearch_blackholed_exits_0_in_time_committing_nothing_unwritten(
        noida, es_url: str, tmp_path: Path) -> None:
    proxy, settings = _blackholed_run(noida, es_url, tmp_path)
    topic, group, index = settings.kafka.input_topics[0], settings.kafka.group_id, settings.elasticsearch.index
    first, second = sample_records(200, prefix="before"), sample_records(300, prefix="during", seed=5)
    try:
        with _spawn(settings, tmp_path / "run.log") as proc:
            ends = produce(noida.bootstrap, topic, record_messages(first))
            wait_for(lambda: committed_offsets(noida.bootstrap, group, topic) == {p: ends.get(p, -1001)
                                                                                 for p in range(3)},
                     90, "the first records committed")
            proxy.blackhole()
            produce(noida.bootstrap, topic, record_messages(second))
            wait_for(lambda: any("_bulk" in path for path in proxy.held), 60, "a bulk request held unanswered")
            before = committed_offsets(noida.bootstrap, group, topic)
            code, took, out = _stop(proc, settings.batch.shutdown_timeout_s)
        log = (tmp_path / "run.log").read_text()
        assert code == 0 and took <= settings.batch.shutdown_timeout_s + 1.0, (code, took, log[-3000:])
        assert json.loads(out.splitlines()[-1])["event"] == "processor_stopped"
        assert committed_offsets(noida.bootstrap, group, topic) == before  # nothing unwritten committed
    finally:
        proxy.heal()
        proxy.stop()
    assert es_count(es_url, index) == len(first)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_processor_whose_sinks_hang_exits_with_the_stalled_status(noida, es_url: str, tmp_path: Path) -> None:
    proxy, settings = _blackholed_run(noida, es_url, tmp_path, exit_after_stalled_s=4)
    topic, group = settings.kafka.input_topics[0], settings.kafka.group_id
    try:
        proxy.blackhole()
        with _spawn(settings, tmp_path / "run.log") as proc:
            produce(noida.bootstrap, topic, record_messages(sample_records(100, prefix="hang")))
            wait_for(lambda: proxy.held, 60, "a request held unanswered")
            held_at = time.monotonic()
            out, _ = proc.communicate(timeout=60)
            took = time.monotonic() - held_at
        log = (tmp_path / "run.log").read_text()
        assert proc.returncode == EXIT_STALLED, log[-3000:]
        # stalled 4 s (counted from the first consumed work, before the request was held), then a stop within 8 s
        assert took <= 4 + 8 + 1.0, took
        assert "processor stalled for" in log
        assert set(committed_offsets(noida.bootstrap, group, topic).values()) == {-1001}  # nothing committed
        assert json.loads(out.splitlines()[-1])["event"] == "processor_stopped"
    finally:
        proxy.heal()
        proxy.stop()


# ----------------------------------------------------------------------------- --log-level before or after


@pytest.mark.parametrize("prog, modules", [("corestream", ["streaming.apps.demo", "streaming.apps.ops"]),
                                           ("corestream-train", ["trainer.training.train"])])
def test_log_level_and_config_are_accepted_before_and_after_the_command(prog: str, modules: list[str],
                                                                        tmp_path: Path) -> None:
    parser = build_parser(prog, "test", modules)
    command = "demo" if prog == "corestream" else "train"
    assert parser.parse_args(["--log-level", "info", command]).log_level == "INFO"
    assert parser.parse_args([command, "--log-level", "INFO"]).log_level == "INFO"
    assert parser.parse_args(["--log-level", "ERROR", command, "--log-level", "debug"]).log_level == "DEBUG"
    assert parser.parse_args([command]).log_level is None
    config = tmp_path / "c.yaml"
    assert parser.parse_args([command, "--config", str(config)]).config == str(config)
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--log-level", "LOUD"])
    if prog == "corestream":  # nested: corestream topics create --log-level INFO
        assert parser.parse_args(["topics", "create", "--log-level", "INFO"]).log_level == "INFO"


def test_log_level_after_the_command_decides_what_is_logged(capsys: pytest.CaptureFixture[str]) -> None:
    def register(subparsers) -> None:
        probe = subparsers.add_parser("probe")
        probe.set_defaults(func=lambda args, settings: logging.getLogger("corestream.probe").debug("probe-debug"))

    module = type(sys)("probe_commands")
    module.register = register
    sys.modules["probe_commands"] = module
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        parser = build_parser("corestream", "test", ["probe_commands"])
        assert run_cli(parser, ["probe", "--log-level", "DEBUG"]) == 0
        assert "probe-debug" in capsys.readouterr().err
        assert run_cli(parser, ["--log-level", "DEBUG", "probe", "--log-level", "INFO"]) == 0
        assert "probe-debug" not in capsys.readouterr().err
    finally:
        del sys.modules["probe_commands"]
        root.handlers[:], root.level = handlers, level


# ----------------------------------------------------------------------------- docker-compose


def test_compose_restarts_a_stalled_processor_and_lets_a_stop_finish() -> None:
    from tests.test_compose import SERVICES, environment

    processor = SERVICES["processor"]
    env = environment("processor")
    defaults = Settings().batch
    exit_after = float(env["CORESTREAM_BATCH__EXIT_AFTER_STALLED_S"])
    assert exit_after > defaults.stalled_after_s  # /healthz red first, then the exit
    assert processor["restart"] in ("unless-stopped", "always", "on-failure")  # an exit with status 3 restarts
    assert "/healthz" in " ".join(processor["healthcheck"]["test"])
    grace = processor["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > defaults.shutdown_timeout_s  # SIGKILL only after the stop
    assert "CORESTREAM_BATCH__EXIT_AFTER_STALLED_S" not in environment("api")
