"""A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller).

The broker runs from jars that ``mvn`` fetches from Maven Central using
``deploy/kafka/pom.xml`` (which also pins the Kafka version). Jars are cached outside
the repository, in ``${CONSENT_LEDGER_CACHE:-~/.cache/consent-ledger}/kafka-<ver>/libs``.

Layout of a broker's ``data_dir``::

    instance.json      ports + cluster id chosen on first start (reused by restart)
    server.properties  regenerated on every start from instance.json
    logs/              Kafka's log.dirs (topic data and the KRaft metadata log)
    server.log         broker log (log4j2, see deploy/kafka/log4j2.properties)
    jvm.out            JVM stdout/stderr (crashes before log4j is up land here)
    broker.pid         pid of the running JVM (lets ``python -m tests.infra down`` stop it)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from tests.infra import InfraError, register_cleanup, tail, unregister_cleanup

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
POM_PATH = KAFKA_DEPLOY_DIR / "pom.xml"
LOG4J2_CONFIG = KAFKA_DEPLOY_DIR / "log4j2.properties"

NODE_ID = 1
MVN_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0

_PR_SET_PDEATHSIG = 1


def kafka_version() -> str:
    """The Kafka version pinned in deploy/kafka/pom.xml (single source of truth)."""
    try:
        root = ET.parse(POM_PATH).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InfraError(f"Kafka jars: cannot read {POM_PATH}: {exc}") from exc
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = root.find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise InfraError(f"Kafka jars: {POM_PATH} has no <kafka.version> property")
    return (node.text or "").strip()


def cache_root() -> Path:
    env = os.environ.get("CONSENT_LEDGER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "consent-ledger"


def default_jars_dir() -> Path:
    return cache_root() / f"kafka-{kafka_version()}" / "libs"


def _main_jar(jars_dir: Path) -> Path:
    return jars_dir / f"kafka_2.13-{kafka_version()}.jar"


def ensure_jars(jars_dir: Path | None = None) -> Path:
    """Return a directory holding the broker's jars, running ``mvn`` only if not cached.

    mvn writes into a temporary sibling directory that is renamed into place at the end,
    so an interrupted download never looks like a complete cache and two processes
    fetching at once do not mix their files.
    """
    jars_dir = (jars_dir or default_jars_dir()).expanduser().resolve()
    if _main_jar(jars_dir).is_file():
        return jars_dir
    if jars_dir.is_dir() and any(jars_dir.iterdir()):
        # Refuse to "fix" a directory we did not fill: it is somebody's explicit choice.
        raise InfraError(
            f"Kafka jars: {jars_dir} is not empty but has no {_main_jar(jars_dir).name}; "
            "delete it or point jars_dir elsewhere"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError(
            "Kafka jars: `mvn` (Apache Maven) is not on PATH; it is needed once to fetch "
            f"the Kafka {kafka_version()} jars from Maven Central (apt-get install maven)"
        )
    jars_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{jars_dir.name}.tmp-", dir=jars_dir.parent))
    cmd = [
        mvn, "-B", "-q", "-f", str(POM_PATH),
        "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=MVN_TIMEOUT_S, check=False
        )
        if proc.returncode != 0 or not _main_jar(staging).is_file():
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise InfraError(
                f"Kafka jars: `{' '.join(cmd)}` exited with {proc.returncode} and did not "
                f"produce {_main_jar(staging).name}:\n{output}"
            )
        with contextlib.suppress(OSError):
            jars_dir.rmdir()  # an empty directory the caller pre-created
        try:
            staging.rename(jars_dir)
        except OSError:
            if not _main_jar(jars_dir).is_file():  # lost a race to a complete cache: fine
                raise
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"Kafka jars: mvn did not finish within {MVN_TIMEOUT_S:.0f}s") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return jars_dir


def find_java() -> str:
    """The java executable: $JAVA_HOME/bin/java if JAVA_HOME is set, else PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise InfraError(f"Kafka broker could not start: JAVA_HOME={java_home} has no bin/java")
        return str(java)
    found = shutil.which("java")
    if found is None:
        raise InfraError(
            "Kafka broker could not start: `java` (17+) is not on PATH and JAVA_HOME is unset"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _random_cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, url-safe base64 without padding.
    # Kafka's own generator rejects ids starting with "-" (they read as CLI options).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
# process. start() may be called from short-lived threads (asyncio.to_thread, executor
# pools), so every die-with-parent JVM is forked from this one thread, which lives until
# interpreter shutdown.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-spawner")


def _pdeathsig_preexec() -> Any:
    """preexec_fn that makes the child get SIGTERM when this process dies, even by SIGKILL.

    libc and the parent pid are resolved here, before fork, so the child only makes
    two syscalls between fork and exec.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def probe_metadata(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if the broker answers a Metadata request listing a broker and a controller.

    Uses the Kafka wire protocol directly (Metadata v4, non-flexible) so the check is
    synchronous and independent of any client library's retry/backoff behaviour.
    A combined KRaft node only opens its client listener for requests once it has
    registered and been unfenced, but checking the metadata content makes the
    "ready" claim explicit rather than relying on that implementation detail.
    """
    client_id = b"consent-ledger-probe"
    # header v1: api_key, api_version, correlation_id, client_id
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    # body v4: topics = [] (no topics), allow_auto_topic_creation = false
    body = struct.pack(">i?", 0, False)
    request = header + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            data = _recv_exact(sock, size)
    except (OSError, struct.error, ConnectionError):
        return False
    try:
        correlation_id, _throttle, n_brokers = struct.unpack_from(">iii", data, 0)
        if correlation_id != 7 or n_brokers < 1:
            return False
        offset = 12
        for _ in range(n_brokers):
            offset += 4  # node_id
            (host_len,) = struct.unpack_from(">h", data, offset)
            offset += 2 + host_len + 4  # host, port
            (rack_len,) = struct.unpack_from(">h", data, offset)
            offset += 2 + max(rack_len, 0)
        (cluster_len,) = struct.unpack_from(">h", data, offset)
        offset += 2 + max(cluster_len, 0)
        (controller_id,) = struct.unpack_from(">i", data, offset)
    except struct.error:
        return False
    return bool(controller_id >= 0)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


class KafkaBroker:
    """One Kafka 4.x process acting as both KRaft controller and broker, on 127.0.0.1.

    Ports are picked on the first start and persisted in ``instance.json``: the
    controller endpoint is part of the formatted KRaft voter set, and clients keep the
    bootstrap address across ``restart()``.
    """

    def __init__(
        self,
        data_dir: Path,
        jars_dir: Path | None = None,
        *,
        heap: str = "1g",
        die_with_parent: bool = True,
        cluster: dict[str, Any] | None = None,
    ) -> None:
        """``cluster``, for a node of a ``KafkaCluster``: its ``node_id``, ``port`` and
        ``controller_port``, the ``cluster_id`` and the static ``voters``."""
        self.data_dir = Path(data_dir).resolve()
        self._jars_dir = jars_dir
        self._heap = heap
        self._cluster = cluster
        # False for `python -m tests.infra up`, whose broker must outlive the CLI.
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._instance: dict[str, Any] | None = self._load_instance()
        if cluster is not None and self._instance is None:
            self._instance = {
                "port": cluster["port"],
                "controller_port": cluster["controller_port"],
                "cluster_id": cluster["cluster_id"],
                "kafka_version": kafka_version(),
            }

    # -- public API -------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if self._instance is None:
            raise InfraError("Kafka broker has not been started yet: no port assigned")
        return f"127.0.0.1:{self._instance['port']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """Pid of the running JVM (ours or one started by another process), else None."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        pid = self._read_pid_file()
        return pid if pid is not None and self._is_our_jvm(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60) -> None:
        """Start the broker and block until it serves metadata.

        ``timeout`` covers JVM start-up only; a first-time jar download (mvn) is not
        counted against it.
        """
        running = self.pid
        if running is not None:
            raise InfraError(
                f"Kafka broker could not start: one is already running on {self.data_dir} "
                f"(pid {running})"
            )
        jars_dir = ensure_jars(self._jars_dir)
        java = find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)

        # A fresh data dir picks ports; if one got taken between our probe and the JVM's
        # bind (a race with other processes), wipe and retry with new ports. Data dirs
        # that already hold data never change ports.
        fresh = self._instance is None
        attempts = 3 if fresh else 1
        for attempt in range(1, attempts + 1):
            if self._instance is None:
                self._instance = {
                    "port": _free_port(),
                    "controller_port": _free_port(),
                    "cluster_id": _random_cluster_id(),
                    "kafka_version": kafka_version(),
                }
                self._write_instance()
            try:
                self._write_server_properties()
                self._format_storage_if_needed(java, jars_dir)
                self._spawn(java, jars_dir)
                self._wait_ready(timeout)
                return
            except InfraError as exc:
                self._terminate(graceful=False)
                if fresh and attempt < attempts and "Address already in use" in str(exc):
                    self._wipe()
                    continue
                raise

    def stop(self) -> None:
        """Graceful stop: SIGTERM (Kafka's controlled shutdown), SIGKILL after 30 s."""
        self._terminate(graceful=True)

    def kill(self) -> None:
        """SIGKILL the broker, like a machine crash for the process (data may need recovery)."""
        self._terminate(graceful=False)

    def restart(self, timeout: float = 60) -> None:
        """Stop (if running) and start again on the same ports and data."""
        self.stop()
        self.start(timeout)

    # -- internals --------------------------------------------------------------------

    @property
    def _config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _pid_path(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def _jvm_out_path(self) -> Path:
        return self.data_dir / "jvm.out"

    def _load_instance(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.data_dir / "instance.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InfraError(
                f"Kafka broker: unreadable {self.data_dir}/instance.json: {exc}"
            ) from exc
        return data

    def _write_instance(self) -> None:
        assert self._instance is not None
        (self.data_dir / "instance.json").write_text(json.dumps(self._instance, indent=2) + "\n")

    def _wipe(self) -> None:
        for name in ("instance.json", "server.properties", "broker.pid"):
            (self.data_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.data_dir / "logs", ignore_errors=True)
        self._instance = None

    def _write_server_properties(self) -> None:
        assert self._instance is not None
        port, cport = self._instance["port"], self._instance["controller_port"]
        cluster = self._cluster
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID if cluster is None else cluster["node_id"]),
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{cport}",
            "log.dirs": str(self.data_dir / "logs"),
            # One node: every internal topic must fit on a single replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Tests should not wait 3 s for a consumer group's first rebalance.
            "group.initial.rebalance.delay.ms": "0",
            # The ledger creates its topics with ledger settings; a client that skips
            # that must fail loudly, not get a topic with a seven-day retention.
            "auto.create.topics.enable": "false",
            # After a SIGKILL the controller refuses the restarted broker's registration
            # (DUPLICATE_BROKER_REGISTRATION) until the dead incarnation's session expires:
            # 9 s by default. Crash tests restart often, so expire sessions sooner.
            # Heartbeats stay well inside the session so a loaded CI box is not fenced.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            # The machine has 2 cores; Kafka's defaults (3 network + 8 io threads) are
            # sized for servers and only add context switching here.
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if cluster is not None:
            # Three nodes, each broker and controller, with a static voter set; every
            # topic on three replicas, two of which must have an append.
            del props["controller.quorum.bootstrap.servers"]
            props.update(
                {
                    "controller.quorum.voters": cluster["voters"],
                    "offsets.topic.replication.factor": "3",
                    "transaction.state.log.replication.factor": "3",
                    "transaction.state.log.min.isr": "2",
                    "share.coordinator.state.topic.replication.factor": "3",
                    "share.coordinator.state.topic.min.isr": "2",
                    "default.replication.factor": "3",
                    "min.insync.replicas": "2",
                    "unclean.leader.election.enable": "false",
                    "num.network.threads": "1",
                    "num.io.threads": "2",
                }
            )
        text = "# Generated by tests/infra/kafka_broker.py on every start; edits are lost.\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        self._config_path.write_text(text)

    def _java_base(self, java: str, jars_dir: Path) -> list[str]:
        return [
            java,
            f"-Xmx{self._heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-UsePerfData",  # no /tmp/hsperfdata_* files left behind
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            # Kafka's own shutdown hook logs the orderly shutdown; log4j's hook would run
            # concurrently and could close the log file before those lines are written.
            "-Dlog4j2.shutdownHookEnabled=false",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{jars_dir}/*",
        ]

    def _format_storage_if_needed(self, java: str, jars_dir: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        assert self._instance is not None
        # --standalone: this node is the whole (dynamic) KRaft voter set, so the format
        # records its controller endpoint; hence the controller port never changes.
        cmd = [
            *self._java_base(java, jars_dir), "kafka.tools.StorageTool", "format",
            "--cluster-id", self._instance["cluster_id"],
            "--config", str(self._config_path),
            "--standalone", "--ignore-formatted",
        ]  # fmt: skip
        if self._cluster is not None:  # the static voters are in the config
            cmd.remove("--standalone")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise InfraError("Kafka broker could not start: storage format timed out") from exc
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise InfraError(
                f"Kafka broker could not start: `kafka.tools.StorageTool format` exited with "
                f"{proc.returncode}:\n{output}\n{tail(self.log_path)}"
            )

    def _spawn(self, java: str, jars_dir: Path) -> None:
        cmd = [*self._java_base(java, jars_dir), "kafka.Kafka", str(self._config_path)]
        out: IO[bytes]
        with self._jvm_out_path.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting broker ===\n".encode())
            out.flush()
            kwargs: dict[str, Any] = {
                "stdin": subprocess.DEVNULL,
                "stdout": out,
                "stderr": subprocess.STDOUT,
                "cwd": self.data_dir,
                # Own session: a terminal's Ctrl-C goes to Python, which stops the broker
                # in order, instead of racing it; `up` brokers also survive the terminal.
                "start_new_session": True,
            }

            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(cmd, **kwargs)

            if self._die_with_parent:
                kwargs["preexec_fn"] = _pdeathsig_preexec()
                proc = _SPAWNER.submit(popen).result()
            else:
                proc = popen()
        self._proc = proc
        self._pid_path.write_text(f"{proc.pid}\n")
        if self._die_with_parent:
            register_cleanup(self, self.stop)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None and self._instance is not None
        deadline = time.monotonic() + timeout
        port = int(self._instance["port"])
        while True:
            code = self._proc.poll()
            if code is not None:
                raise InfraError(
                    f"Kafka broker could not start: the JVM exited with code {code}.\n"
                    f"{tail(self._jvm_out_path, 20)}\n{tail(self.log_path)}"
                )
            if probe_metadata("127.0.0.1", port, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                raise InfraError(
                    f"Kafka broker could not start: not serving metadata on 127.0.0.1:{port} "
                    f"after {timeout:.0f}s.\n{tail(self._jvm_out_path, 20)}\n{tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _read_pid_file(self) -> int | None:
        try:
            return int(self._pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _is_our_jvm(self, pid: int) -> bool:
        # Guard against pid reuse: only signal a JVM running *this* data dir's config.
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (
            _pid_alive(pid) and b"kafka.Kafka" in argv and str(self._config_path).encode() in argv
        )

    def _terminate(self, *, graceful: bool) -> None:
        unregister_cleanup(self)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                if graceful:
                    proc.terminate()
                    try:
                        proc.wait(STOP_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                else:
                    proc.kill()
                    proc.wait()
        else:
            # A broker started by another process (`python -m tests.infra up`).
            pid = self._read_pid_file()
            if pid is not None and self._is_our_jvm(pid):
                self._signal_and_wait(pid, graceful)
        self._pid_path.unlink(missing_ok=True)

    @staticmethod
    def _signal_and_wait(pid: int, graceful: bool) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + (STOP_TIMEOUT_S if graceful else 10.0)
        killed = not graceful
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                if killed:
                    raise InfraError(f"Kafka broker: pid {pid} survived SIGKILL for 10s")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 10.0
            time.sleep(0.1)


class KafkaCluster:
    """Three KRaft nodes on loopback, each broker and controller (static voters):
    replication factor 3, ``min.insync.replicas`` 2, no unclean leader election. For
    tests that kill a partition's leader; each JVM gets a small heap."""

    def __init__(self, data_dir: Path, *, size: int = 3, heap: str = "256m") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = _random_cluster_id()
        ports = [(_free_port(), _free_port()) for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        self.nodes = {
            i + 1: KafkaBroker(
                self.data_dir / f"node-{i + 1}",
                heap=heap,
                cluster={
                    "node_id": i + 1,
                    "port": port,
                    "controller_port": cport,
                    "cluster_id": cluster_id,
                    "voters": voters,
                },
            )
            for i, (port, cport) in enumerate(ports)
        }

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    def start(self, timeout: float = 120) -> None:
        """Start every node; a node waits for a quorum, so they start side by side."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            started = [pool.submit(node.start, timeout) for node in self.nodes.values()]
            errors = [f.exception() for f in started]
        failed = [e for e in errors if e is not None]
        if failed:
            self.stop()
            raise InfraError(f"Kafka cluster could not start: {failed[0]}")

    def stop(self) -> None:
        """Stop every node, side by side (each waits for its controlled shutdown)."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes.values()))
