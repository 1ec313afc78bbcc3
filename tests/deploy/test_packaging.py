"""The packaging in `Dockerfile` and `deploy/k8s/`, checked without a cluster or a Docker engine.

- every manifest is a valid Kubernetes object (kubernetes-validate's bundled schemas, strict:
  an unknown field fails), and `kubectl kustomize` renders them all when kubectl is here;
- the manifests agree with each other and with the config they carry (names, labels, probes,
  mount paths, a termination grace longer than the host's shutdown grace plus its drain);
- the Dockerfile is multi-stage, ends on Debian slim as a numeric non-root user, copies only
  from its own stages and only files the repository has or the build makes, and ships exactly
  the models the ConfigMap's config names; `.dockerignore` keeps out build outputs but none of
  the sources, lock files or models the build reads.

The host itself parses the ConfigMap's config in a unit test of `host/server/src/config.rs`.
Run: python3 -m pytest -q tests/deploy
"""

import pathlib
import re
import shutil
import subprocess
import tomllib

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"


def manifests():
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def objects():
    out = {}
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def one(kind):
    found = [o for (k, _), o in objects().items() if k == kind]
    assert len(found) == 1, f"one {kind}: {found}"
    return found[0]


def config():
    return tomllib.loads(one("ConfigMap")["data"]["infergate.toml"])


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_each_manifest_is_a_valid_kubernetes_object(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_an_unknown_field_fails_validation():
    bad = yaml.safe_load((K8S / "deployment.yaml").read_text())
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in manifests()]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_object():
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], check=True, capture_output=True, text=True
    ).stdout
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    assert rendered == set(objects())


def test_the_deployment_fits_the_service_pdb_hpa_config_and_secret():
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one("Service")["spec"]["selector"].items() <= labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    (container,) = pod["spec"]["containers"]
    port = container["ports"][0]
    assert port["containerPort"] == int(config()["listen"].rsplit(":", 1)[1])
    assert one("Service")["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_mount = next(
        m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]
    )
    assert volumes[config_mount["name"]]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    args = container["args"]
    assert args[0] == "serve"
    config_path = args[args.index("--config") + 1]
    assert config_path == f"{config_mount['mountPath']}/infergate.toml"

    secret = one("Secret")
    (env_from,) = container["envFrom"]
    assert env_from["secretRef"]["name"] == secret["metadata"]["name"]
    for key in ("INFERGATE_ADMIN_KEY", "INFERGATE_API_KEY", "INFERGATE_ENCRYPTION_KEY"):
        assert len(secret["stringData"][key]) >= 16, key

    security = container["securityContext"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    # What the image's user writes (compile cache, data) is a volume, not the image.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    image_env = dict(re.findall(r"(XDG_\w+)=(\S+)", (ROOT / "Dockerfile").read_text()))
    assert set(image_env.values()) <= mounts, (image_env, mounts)


def test_a_pod_is_given_time_to_drain():
    server = config()["server"]
    grace_s = (server["shutdown_grace_ms"] + server["drain_timeout_ms"]) / 1000
    period = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period > grace_s
    readiness = one("Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    # The endpoints drop a draining pod before it stops accepting.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] * 1000 < server["shutdown_grace_ms"]


def test_the_replicas_share_state():
    c = config()
    assert c["auth"]["database"].startswith("postgres://")
    assert "cluster" in c
    assert c["limits"]["store"] == "redis"


def dockerfile_stages():
    """[(name, base, [instructions])] of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append((name, parts[0], []))
        else:
            stages[-1][2].append((word.upper(), rest))
    return stages


def test_the_dockerfile_is_multi_stage_and_ends_small_and_unprivileged():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    names = {s[0] for s in stages}
    _, base, final = stages[-1]
    assert base.startswith("debian:") and base.endswith("-slim"), base
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0, users
    for word, rest in final:
        if word == "COPY" and "--from=" in rest:
            assert re.search(r"--from=(\S+)", rest).group(1) in names, rest
    assert not any("cargo" in rest or "rustup" in rest for _, rest in final)


def test_the_dockerfile_builds_from_files_the_repository_has():
    (_, _, build), *_ = dockerfile_stages()
    for word, rest in build:
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                if source != ".":
                    assert (ROOT / source).exists(), source
        if word == "RUN":
            for script in re.findall(r"(?<![\w/])((?:models|bench|plugins)/[\w./-]+)", rest):
                assert (ROOT / script).exists(), script
    run = " ".join(rest for word, rest in build if word == "RUN")
    assert "models/fetch.sh" in run
    assert "--profile dist" in run and "--locked" in run
    assert "wasm32-wasip2" in run


def test_the_image_ships_exactly_the_models_the_config_names():
    (_, _, final) = dockerfile_stages()[-1]
    home = next(
        m.group(1) for w, rest in final if w == "ENV" for m in [re.search(r"INFERGATE_HOME=(\S+)", rest)] if m
    )
    shipped = set()
    for word, rest in final:
        if word == "COPY" and "/models/" in rest:
            src, dest = rest.split()[-2:]
            shipped.add(dest)
            # What is copied is what models/fetch.sh or the repository puts there.
            assert src.startswith("/src/models/"), src
            relative = src.removeprefix("/src/")
            assert (ROOT / relative).exists() or relative in (ROOT / "models/fetch.sh").read_text(), src
    named = {m["path"] for m in config()["models"]}
    assert named == shipped
    assert all(p.startswith(home + "/models/") for p in named)


def dockerignored(path, patterns):
    """Whether .dockerignore's patterns leave `path` (relative, with /) out of the build context:
    Docker's rules (a pattern matches the path or a directory above it, `**` any number of
    directories, a later `!pattern` takes a path back)."""

    def regex(pattern):
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "(?:/.*)?")

    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if regex(pattern).fullmatch(path):
            excluded = not negate
    return excluded


def test_the_build_context_holds_what_the_build_needs():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert dockerignored("target/dist/infergate", patterns)
    assert dockerignored("plugins/sdk-js/node_modules/x.js", patterns)
    # `cargo build --locked` and the host's build.rs (which builds the plugins workspace from
    # plugins/, examples/ and wit/), the model tooling, and the one model the repository holds.
    needed = [
        "Cargo.toml", "Cargo.lock", ".cargo/config.toml", "plugins/Cargo.toml",
        "plugins/Cargo.lock", "models/fetch.sh", "models/requirements.txt",
        "models/digits/digits.onnx",
    ]
    for path in needed:
        assert (ROOT / path).is_file(), path
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split() if shutil.which("git") else []
    sources = [p for p in tracked if p.split("/")[0] in ("host", "plugins", "examples", "wit")]
    for path in needed + sources:
        assert not dockerignored(path, patterns), f".dockerignore leaves out {path}"
