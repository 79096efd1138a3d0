"""The deployment files say what the program reads: paths, ports, variable
names. (No container runtime or cluster here: the manifests are checked
against the program, not run; the systemd unit is checked by systemd.)"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from reconciler import config
from reconciler.config.go_flags import ENV_ONLY, OVERRIDES
from tests.support.cli import system_binary

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "examples" / "kubernetes"

# every environment variable the program reads
KNOWN_ENV = ({o.env for o in OVERRIDES + ENV_ONLY if o.env}
             | {name for o in OVERRIDES + ENV_ONLY for name in o.file_envs}
             | {"REPLICATOR_CONFIG", "REPLICATOR_DEBUG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def manifests() -> dict[str, dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def sidecar_and_immudb():
    pod = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "replicator")
    immudb = next(c for c in pod["containers"] if c["name"] == "immudb")
    return pod, sidecar, immudb


def test_sidecar_is_a_native_sidecar_with_the_config_mounted_as_a_directory():
    pod, sidecar, _ = sidecar_and_immudb()
    assert sidecar["restartPolicy"] == "Always"
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert all("subPath" not in m for m in sidecar["volumeMounts"])
    config_arg = sidecar["args"][sidecar["args"].index("-c") + 1]
    assert Path(config_arg).parent == Path(mounts["config"]["mountPath"])
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == manifests()["ConfigMap"]["metadata"]["name"]
    assert Path(config_arg).name in manifests()["ConfigMap"]["data"]


def test_sidecar_environment_names_are_ones_the_program_reads_and_point_into_the_secret():
    pod, sidecar, _ = sidecar_and_immudb()
    secret_mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "secrets")["mountPath"]
    keys = set(manifests()["Secret"]["stringData"])
    for var in sidecar["env"]:
        assert var["name"] in KNOWN_ENV, var["name"]
        if var["name"].endswith("_FILE"):
            path = Path(var["value"])
            assert path.parent == Path(secret_mount) and path.name in keys


def configmap_config(tmp_path) -> config.Config:
    """The ConfigMap's config, loaded with the sidecar's environment."""
    _, sidecar, _ = sidecar_and_immudb()
    text = manifests()["ConfigMap"]["data"]["replicator.yaml"]
    (tmp_path / "replicator.yaml").write_text(text)
    env = {}
    for var in sidecar["env"]:
        secret = tmp_path / Path(var["value"]).name
        secret.write_text("Some-secret-1\n")
        env[var["name"]] = str(secret)
    return config.load(tmp_path / "replicator.yaml", env=env)


def test_configmap_config_is_valid_with_the_pods_secrets(tmp_path):
    assert configmap_config(tmp_path).follower.password.reveal() == "Some-secret-1"


def test_probes_data_volume_and_ports_match_the_config(tmp_path):
    cfg = configmap_config(tmp_path)
    _, sidecar, immudb = sidecar_and_immudb()
    port = cfg.api.host_port[1]
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert {"name": "api", "containerPort": port} in sidecar["ports"]
    data_sidecar = next(m for m in sidecar["volumeMounts"] if m["name"] == "data")
    data_immudb = next(m for m in immudb["volumeMounts"] if m["name"] == "data")
    assert Path(data_sidecar["mountPath"]) == cfg.replica.data_dir
    assert immudb["args"][immudb["args"].index("--dir") + 1] == data_immudb["mountPath"]
    grpc = next(p["containerPort"] for p in immudb["ports"] if p["name"] == "grpc")
    assert (cfg.replica.host, cfg.replica.port) == ("127.0.0.1", grpc)
    writable = {m["mountPath"] for m in sidecar["volumeMounts"] if not m.get("readOnly")}
    assert str(cfg.backup.staging_dir) in writable
    assert str(Path(cfg.backup.targets["local"].path).parent) in writable
    # the local checkpoints on a volume of their own, writable, not the backups' (an anchor must not sit beside
    # what it vouches for)
    assert str(cfg.backup.trust.state_folder) in writable
    state = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == str(cfg.backup.trust.state_folder))
    backups = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == str(Path(cfg.backup.targets["local"].path).parent))
    assert state["name"] != backups["name"]


def restore_container():
    pod = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["initContainers"]]
    return names, pod["initContainers"][names.index("restore")]


def test_the_restore_init_container_fills_an_empty_data_volume_before_immudb_and_the_sidecar(tmp_path):
    """It runs to completion first (no restartPolicy: a plain init
    container, before the native sidecar), restores every database from
    the journal's target into the volume immudb serves, and leaves a volume
    that holds anything as it is."""
    from reconciler.cli import build_parser
    names, restore = restore_container()
    _, sidecar, immudb = sidecar_and_immudb()
    assert names.index("restore") < names.index("replicator") and "restartPolicy" not in restore
    args = build_parser().parse_args(restore["args"])
    assert (args.command, args.all, args.if_empty, args.to_end) == ("restore", True, True, True)
    data = next(m for m in restore["volumeMounts"] if m["name"] == "data")
    assert not data.get("readOnly") and args.data_dir == data["mountPath"]
    assert immudb["args"][immudb["args"].index("--dir") + 1] == data["mountPath"]
    assert restore["image"] == sidecar["image"]
    for var in restore["env"]:
        assert var["name"] in KNOWN_ENV and var in sidecar["env"], var
    mounts = {m["mountPath"]: m for m in restore["volumeMounts"]}
    assert Path(args.config).parent.as_posix() in mounts
    # what it reads is mounted: the journal's target, and the local checkpoints its anchors are
    cfg = configmap_config(tmp_path)
    assert cfg.backup.continuous is not None
    target = cfg.backup.targets[args.target or cfg.backup.continuous.target]
    assert target.kind == "file" and str(Path(target.path).parent) in mounts
    assert str(cfg.backup.trust.state_folder) in mounts
    assert restore["securityContext"]["runAsUser"] == sidecar["securityContext"]["runAsUser"]


def test_the_image_carries_the_immudb_the_tests_run():
    """The restore container and drills run immudb from the image: built
    from the Go module at the version the suite tests, as the suite builds
    it, and installed on PATH (backup.drill.immudb_binary's fallback)."""
    from tests.support.servers import IMMUDB_MODULE, IMMUDB_VERSION
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^ARG IMMUDB_VERSION={re.escape(IMMUDB_VERSION)}$", text, re.M), "Dockerfile's immudb version"
    assert f"go mod download -json {IMMUDB_MODULE}@v${{IMMUDB_VERSION}}" in text
    assert f"-X {IMMUDB_MODULE}/cmd/version.Version=${{IMMUDB_VERSION}}" in text and "./cmd/immudb" in text
    assert "COPY --from=immudb /out/immudb /usr/local/bin/immudb" in text
    cfg_text = manifests()["ConfigMap"]["data"]["replicator.yaml"]
    assert "immudb_binary" not in cfg_text  # so the image's immudb on PATH is the one used


def test_the_manifests_are_valid_kubernetes_objects():
    """Against Kubernetes' own OpenAPI schemas (kubernetes-validate), strict:
    no unknown field. The oldest version checked is the first with native
    sidecars (restartPolicy on an init container)."""
    import copy

    import kubernetes_validate
    for version in ("1.29", "1.33"):
        for doc in manifests().values():
            kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(manifests()["StatefulSet"])
    broken["spec"]["template"]["spec"]["initContainers"][0]["volumeMount"] = []  # a typo
    try:
        kubernetes_validate.validate(broken, "1.33", strict=True)
    except kubernetes_validate.ValidationError:
        pass
    else:
        raise AssertionError("a manifest with an unknown field passed: the check checks nothing")


def test_dockerfile_runs_the_command_the_manifest_expects():
    text = (ROOT / "Dockerfile").read_text()
    _, sidecar, _ = sidecar_and_immudb()
    assert 'ENTRYPOINT ["replicator"]' in text
    assert re.search(r"EXPOSE\s+8081", text)
    assert "USER 10001" in text and sidecar["securityContext"]["runAsUser"] == 10001
    # installed as users install it: a wheel built from the whole tree (tests/test_packaging.py)
    assert "COPY . /src" in text and "pip wheel" in text and "/wheels/*.whl" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"pyproject.toml", "reconciler", "README.md"} & set(ignored)


UNIT = ROOT / "systemd" / "replicator.service"


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = system_binary("systemd-analyze", "systemd")
    unit = tmp_path / "immudb-replicator.service"
    # verify checks that ExecStart's binary exists: point it at this checkout's command
    replicator = Path(sys.executable).parent / "replicator"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/replicator", str(replicator)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr


def test_systemd_unit_uses_notify_credentials_and_variables_the_program_reads():
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    credentials = dict(re.findall(r"^LoadCredential=([^:]+):(.+)$", text, re.M))
    for name, value in re.findall(r"^Environment=([A-Z_]+)=(.+)$", text, re.M):
        assert name in KNOWN_ENV, name
        assert value.startswith("%d/") and value[3:] in credentials
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes"):
        assert option in text
    timeout = int(re.search(r"TimeoutStopSec=(\d+)s", text).group(1))
    assert timeout > config.load(ROOT / "examples" / "replicator.yaml", env={}).daemon.shutdown_grace


def test_systemd_unit_gives_the_default_state_folder_to_the_service():
    """backup.trust.state_dir: null means $STATE_DIRECTORY, which StateDirectory= sets, private."""
    from reconciler.config.model import DEFAULT_STATE_DIR
    text = UNIT.read_text()
    assert re.search(r"^StateDirectory=(\S+)$", text, re.M).group(1) == DEFAULT_STATE_DIR.name
    assert "StateDirectoryMode=0700" in text
