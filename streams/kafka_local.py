"""A real Apache Kafka 4.x broker on loopback, from Maven Central jars, without Docker.

Used by the tests, the demo and ``xsp kafka start|stop|status``.

* ``install_kafka()`` runs Maven once on ``deploy/kafka/pom.xml`` to copy the
  broker and its runtime dependencies into a cache folder
  (``XSP_KAFKA_HOME``, default ``~/.cache/xsp/kafka-<version>``); later starts
  need no network.
* ``LocalKafka`` formats KRaft storage in a data dir and runs one combined
  broker+controller on 127.0.0.1 with free ports, waits until a metadata
  request really answers, and stops it (SIGTERM, then SIGKILL).

An *attached* broker (the default, used by tests and the demo) dies with the
process that started it (Linux ``PR_SET_PDEATHSIG``), so a killed test run
leaves no broker behind. A *detached* one (``xsp kafka start``) records its
pid and ports in ``<data dir>/xsp-kafka.json`` for ``status`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "BrokerInfo",
    "KafkaLaunchError",
    "LocalKafka",
    "broker_answers",
    "free_port",
    "install_kafka",
    "kafka_home",
    "read_broker_info",
    "stop_recorded",
]

KAFKA_VERSION = "4.1.1"
_POM = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "pom.xml"
_STATE_FILE = "xsp-kafka.json"
_PR_SET_PDEATHSIG = 1


class KafkaLaunchError(RuntimeError):
    """The local broker could not be installed, started or reached; the message says why."""


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """Where a running local broker lives."""

    bootstrap_servers: str
    controller_port: int
    pid: int
    data_dir: str
    started_in_s: float


def kafka_home() -> Path:
    """The jar cache folder (``XSP_KAFKA_HOME`` or ``~/.cache/xsp/kafka-<version>``)."""
    configured = os.environ.get("XSP_KAFKA_HOME")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "xsp" / f"kafka-{KAFKA_VERSION}"


def _libs_dir(home: Path) -> Path:
    return home / "libs"


def _installed(home: Path) -> bool:
    return (_libs_dir(home) / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()


def install_kafka(home: Path | None = None, *, quiet: bool = True) -> Path:
    """Make sure the Kafka jars are in ``home``; download them with Maven if not.

    Returns the libs folder. Idempotent: a second call does nothing. Raises
    ``KafkaLaunchError`` if Maven or Java is missing or the download fails.
    """
    home = home or kafka_home()
    libs = _libs_dir(home)
    if _installed(home):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLaunchError(
            "Maven (mvn) is not on PATH; install Maven 3 to fetch the Kafka jars"
        )
    if not _POM.exists():
        raise KafkaLaunchError(f"Kafka pom not found at {_POM}")
    staging = home / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(_POM),
        "package",
        f"-Dkafka.version={KAFKA_VERSION}",
        f"-Dkafka.libs.dir={staging}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
    if result.returncode != 0:
        tail = ((result.stdout or "") + (result.stderr or ""))[-4000:]
        raise KafkaLaunchError(f"Maven could not fetch Kafka {KAFKA_VERSION}:\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent thread dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def _answers(bootstrap: str, timeout_s: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    # A probe expects refusals; aiokafka would log each one as an error.
    quiet = logging.getLogger("aiokafka")
    previous = quiet.level
    quiet.setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return bool(cluster.get("brokers"))
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        quiet.setLevel(previous)


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True if a Kafka broker at ``bootstrap`` answers a metadata request."""
    return asyncio.run(_answers(bootstrap, timeout_s))


def read_broker_info(data_dir: Path) -> BrokerInfo | None:
    """The broker recorded in ``data_dir`` by a detached start, or None."""
    path = data_dir / _STATE_FILE
    if not path.exists():
        return None
    return BrokerInfo(**json.loads(path.read_text()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1, its storage in ``data_dir``.

    Ports are chosen free at the first start and kept in the data dir, so a
    restart on the same data dir comes back on the same address with its data.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        home: Path | None = None,
        heap: str = "512m",
        attached: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.home = home or kafka_home()
        self.heap = heap
        self.attached = attached
        self._process: subprocess.Popen[bytes] | None = None
        self.info: BrokerInfo | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.info is None:
            raise KafkaLaunchError("the broker is not running")
        return self.info.bootstrap_servers

    def start(self, *, timeout_s: float = 60.0) -> BrokerInfo:
        """Format storage if new, start the broker, return once it answers metadata requests.

        Raises ``KafkaLaunchError`` (with the end of the broker log) if it does
        not answer within ``timeout_s``.
        """
        started = time.monotonic()
        libs = install_kafka(self.home)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = self._ports()
        properties = self._write_config(ports)
        java = shutil.which("java")
        if java is None:
            raise KafkaLaunchError("Java is not on PATH; Kafka 4 needs Java 17 or newer")
        classpath = f"{libs}/*"
        log4j = self.data_dir / "log4j2.properties"
        if not (self.data_dir / "kraft" / "meta.properties").exists():
            self._format(java, classpath, properties, log4j)
        log_file = open(self.data_dir / "broker.out", "ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(
            [
                java,
                f"-Xmx{self.heap}",
                f"-Xms{self.heap}",
                "-XX:+UseG1GC",
                "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(properties),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if self.attached else None,
            start_new_session=not self.attached,
        )
        log_file.close()
        bootstrap = f"127.0.0.1:{ports['broker']}"
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise KafkaLaunchError(
                    f"the broker exited with code {self._process.returncode}:\n{self._log_tail()}"
                )
            # A TCP probe first: aiokafka logs an error for every refused connection.
            if _port_open(ports["broker"]) and broker_answers(bootstrap, timeout_s=2.0):
                self.info = BrokerInfo(
                    bootstrap_servers=bootstrap,
                    controller_port=ports["controller"],
                    pid=self._process.pid,
                    data_dir=str(self.data_dir),
                    started_in_s=round(time.monotonic() - started, 2),
                )
                (self.data_dir / _STATE_FILE).write_text(json.dumps(asdict(self.info)))
                return self.info
            time.sleep(0.2)
        self.stop()
        raise KafkaLaunchError(
            f"the broker did not answer within {timeout_s:.0f} s:\n{self._log_tail()}"
        )

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the broker: SIGTERM (controlled shutdown), SIGKILL after ``timeout_s``."""
        pid = self._process.pid if self._process else (self.info.pid if self.info else None)
        if pid is None:
            return
        _terminate(pid, timeout_s, self._process)
        self._process = None
        self.info = None
        (self.data_dir / _STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ports(self) -> dict[str, int]:
        path = self.data_dir / "ports.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        ports = {"broker": free_port(), "controller": free_port()}
        path.write_text(json.dumps(ports))
        return ports

    def _write_config(self, ports: dict[str, int]) -> Path:
        broker, controller = ports["broker"], ports["controller"]
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft"),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "log.flush.interval.messages": "9223372036854775807",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.data_dir / "broker.log")
        )
        return path

    def _format(self, java: str, classpath: str, properties: Path, log4j: Path) -> None:
        cluster_id = _kraft_cluster_id()
        result = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(properties),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise KafkaLaunchError(
                f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}"
            )

    def _log_tail(self, lines: int = 30) -> str:
        texts = []
        for name in ("broker.out", "broker.log"):
            path = self.data_dir / name
            if path.exists():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts[-lines:])


def _kraft_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as StorageTool)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # StorageTool's argument parser reads an id starting with "-" as an option.
        if not cluster_id.startswith("-"):
            return cluster_id


def _terminate(pid: int, timeout_s: float, process: subprocess.Popen[bytes] | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait(timeout=10)


def stop_recorded(data_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the detached broker recorded in ``data_dir``; False if none was running."""
    info = read_broker_info(data_dir)
    if info is None or not _pid_alive(info.pid):
        (data_dir / _STATE_FILE).unlink(missing_ok=True)
        return False
    _terminate(info.pid, timeout_s, None)
    (data_dir / _STATE_FILE).unlink(missing_ok=True)
    return True


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
"""
