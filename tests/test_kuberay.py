"""Laptop to cluster on one image, checked without a registry or a Kubernetes cluster: the KubeRay
`RayJob` (platform/kuberay/rayjob.yaml) against the pinned RayJob CRD schema with the API server's
rules, its entrypoint through actionlab's own CLI parser and config, its runtime env against
platform/runtime_env.yaml, and the Dockerfile's base image, dependency list and build context."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

from actionlab import jobs, storage
from actionlab.data.ray_ingest import DECODE_LABEL_KEY, DECODE_LABEL_VALUE

REPO = Path(__file__).resolve().parents[1]
RAYJOB_FILE = REPO / "platform" / "kuberay" / "rayjob.yaml"
SCHEMA_FILE = REPO / "tests" / "fixtures" / "kuberay" / "rayjob.v1.openapi.json"
SCHEMA_SHA256 = "2a61fe9d5dea232b81e05c74ec8fee6bd2e4a8989f721593831b4d6ebc4c6bd4"
DECODE_LABEL = (DECODE_LABEL_KEY, DECODE_LABEL_VALUE)  # the Ray node label that data.engine=ray sends decode tasks to
GPU = "nvidia.com/gpu"


# --- the files ---------------------------------------------------------------------------------------


def _documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB_FILE.read_text()) if d]


def _rayjob() -> dict:
    (job,) = [d for d in _documents() if d.get("kind") == "RayJob"]
    return job


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pinned(name: str) -> str:
    """The `==` version pyproject.toml pins for a dependency."""
    from packaging.requirements import Requirement

    for text in _pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        if req.name == name:
            (spec,) = [s for s in req.specifier if s.operator == "=="]
            return spec.version
    raise AssertionError(f"{name} is not pinned in pyproject.toml")


def _groups(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


# --- the CRD schema with the API server's rules -------------------------------------------------------


def kubernetes_schema(schema: dict) -> tuple[dict, list[tuple[str, ...]]]:
    """A CRD's structural schema in JSON Schema (Draft 4) terms, as the API server applies it.

    Returns the schema and the field paths that carry CEL rules (`x-kubernetes-validations`), which
    this does not evaluate. Written here because no library on PyPI translates Kubernetes' rules:
    - an object with `properties` takes no other field unless it says
      `x-kubernetes-preserve-unknown-fields`: `kubectl apply` (server-side field validation, Strict
      by default since Kubernetes 1.27) refuses unknown fields; without it they would be dropped unseen;
    - `x-kubernetes-int-or-string`: an integer or a string (`anyOf`, as controller-gen also writes);
    - `nullable`: null is allowed besides the type;
    - `x-kubernetes-list-type: set`: unique items; `map`: unique by `x-kubernetes-list-map-keys`
      (checked by the keyword added in `validator`);
    - `format: int32/int64`: in range (the format checker in `validator`).
    `default` needs nothing: the API server fills defaults in, it never refuses for them.
    """
    schema = copy.deepcopy(schema)
    cel_paths: list[tuple[str, ...]] = []

    def walk(node: dict, path: tuple[str, ...]) -> None:
        if node.get("x-kubernetes-validations"):
            cel_paths.append(path)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, path + (name,))
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + ("[]",))
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path + ("*",))
        for key in ("anyOf", "allOf", "oneOf"):
            for sub in node.get(key) or []:
                walk(sub, path)
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if node.get("x-kubernetes-list-type") == "set":
            node["uniqueItems"] = True

    walk(schema, ())
    return schema, cel_paths


def validator(schema: dict):
    """A Draft 4 validator (OpenAPI 3.0's schema dialect) with Kubernetes' list-map keys and int formats."""
    from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

    def list_map_keys(validator, keys, instance, schema):
        if schema.get("x-kubernetes-list-type") != "map" or not validator.is_type(instance, "array"):
            return
        seen: dict[tuple, int] = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                yield ValidationError(f"items [{seen[key]}] and [{i}] have the same {dict(zip(keys, key))} "
                                      "(x-kubernetes-list-type: map)")
            seen.setdefault(key, i)

    formats = FormatChecker()
    for name, bits in (("int32", 32), ("int64", 64)):
        formats.checks(name)(lambda v, bits=bits: not isinstance(v, int) or -(2 ** (bits - 1)) <= v < 2 ** (bits - 1))
    cls = validators.extend(Draft4Validator, {"x-kubernetes-list-map-keys": list_map_keys})
    return cls(schema, format_checker=formats)


@pytest.fixture(scope="module")
def crd():
    raw = json.loads(SCHEMA_FILE.read_text())
    schema, cel_paths = kubernetes_schema(raw)
    return validator(schema), cel_paths


def _errors(crd, job: dict) -> list[str]:
    check, _ = crd
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in check.iter_errors(job)]


def test_the_schema_is_the_pinned_copy_with_its_source():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256, \
        "tests/fixtures/kuberay/rayjob.v1.openapi.json changed: regenerate it as its README says and update the hash"
    readme = (SCHEMA_FILE.parent / "README.md").read_text()
    for fact in ("github.com/ray-project/kuberay", "v1.7.0", "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
                 "Apache License 2.0", SCHEMA_SHA256):
        assert fact in readme
    raw = json.loads(SCHEMA_FILE.read_text())
    assert set(raw["properties"]) >= {"apiVersion", "kind", "metadata", "spec"}


def test_the_rayjob_is_valid_under_the_crd(crd):
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert _errors(crd, job) == []


def _parent(job, path):
    """The mapping that holds `path`'s last key, and that key."""
    *parents, last = path
    for key in parents:
        job = job[key]
    return job, last


def _drop(path):
    def edit(job):
        node, last = _parent(job, path)
        del node[last]
    return edit


def _rename(path, new):
    def edit(job):
        node, last = _parent(job, path)
        node[new] = node.pop(last)
    return edit


def _set(path, value):
    def edit(job):
        node, last = _parent(job, path)
        node[last] = value
    return edit


def _duplicate_container(job):
    containers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    containers.append(copy.deepcopy(containers[0]))


HEAD = ("spec", "rayClusterSpec", "headGroupSpec")
GPU_GROUP = ("spec", "rayClusterSpec", "workerGroupSpecs", 0)
POD = ("template", "spec")


@pytest.mark.parametrize("edit, expected", [
    (_drop(HEAD + ("template",)), "'template' is a required property"),
    (_drop(GPU_GROUP + ("maxReplicas",)), "'maxReplicas' is a required property"),
    (_drop(GPU_GROUP + POD + ("containers", 0, "name")), "'name' is a required property"),
    (_rename(("spec", "shutdownAfterJobFinishes"), "shutdownAfterJobFinish"),
     "'shutdownAfterJobFinish' was unexpected"),
    (_rename(("spec", "rayClusterSpec", "workerGroupSpecs"), "workerGroupSpec"), "'workerGroupSpec' was unexpected"),
    (_rename(GPU_GROUP + POD + ("containers", 0, "resources"), "resource"), "'resource' was unexpected"),
    (_rename(GPU_GROUP + ("minReplicas",), "minReplica"), "'minReplica' was unexpected"),
    (_set(HEAD + ("rayStartParams", "num-cpus"), 0), "0 is not of type 'string'"),
    (_set(GPU_GROUP + ("replicas",), "8"), "'8' is not of type 'integer'"),
    (_set(GPU_GROUP + ("maxReplicas",), 2 ** 31), "is not a 'int32'"),
    (_set(GPU_GROUP + POD + ("containers", 0, "resources", "limits", "memory"), "48 GiB"), "does not match"),
    (_duplicate_container, "have the same {'name': 'ray-worker'}"),
])
def test_a_broken_rayjob_is_refused(crd, edit, expected):
    job = _rayjob()
    edit(job)
    errors = _errors(crd, job)
    assert any(expected in e for e in errors), errors


def test_plain_json_schema_would_let_a_misspelt_field_through():
    """Why `kubernetes_schema` exists: read as plain JSON Schema, the CRD allows any extra field."""
    from jsonschema import Draft4Validator

    job = _rayjob()
    _rename(("spec", "shutdownAfterJobFinishes"), "shutdownAfterJobFinish")(job)
    _duplicate_container(job)
    assert list(Draft4Validator(json.loads(SCHEMA_FILE.read_text())).iter_errors(job)) == []


def test_no_field_with_an_unchecked_rule_is_used(crd):
    """CEL rules (`x-kubernetes-validations`) are not evaluated here: the manifest stays clear of them."""
    _, cel_paths = crd
    assert cel_paths, "the schema has CEL rules on some fields; this test would be vacuous without them"

    def present(node, path):
        if not path:
            return True
        key, rest = path[0], path[1:]
        if key == "[]":
            return isinstance(node, list) and any(present(item, rest) for item in node)
        if key == "*":
            return isinstance(node, dict) and any(present(v, rest) for v in node.values())
        return isinstance(node, dict) and key in node and present(node[key], rest)

    assert [p for p in cel_paths if present(_rayjob(), p)] == []


_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def test_kuberay_operator_rules_hold():
    """What KubeRay's operator checks beyond the schema (ray-operator/controllers/ray/utils/validation.go)."""
    job = _rayjob()
    name = job["metadata"]["name"]
    assert len(name) <= 47 and _DNS1035.fullmatch(name), "RayJob names are DNS-1035 labels of at most 47 characters"
    assert isinstance(yaml.safe_load(job["spec"]["runtimeEnvYAML"]), dict)
    for group_name, group in _groups(job).items():
        params = group.get("rayStartParams", {})
        assert "labels" not in params, f"{group_name}: Ray node labels go in the group's `labels` field"
        assert not (group.get("resources") and ({"num-cpus", "num-gpus", "memory", "resources"} & set(params))), \
            f"{group_name}: resources in both rayStartParams and `resources`"
        assert group["template"]["spec"]["containers"], f"{group_name}: no container"
        for key, value in (group.get("labels") or {}).items():
            prefix, _, label = key.rpartition("/")
            assert _LABEL_NAME.fullmatch(label) and len(label) <= 63 and len(prefix) <= 253, key
            assert value == "" or (_LABEL_NAME.fullmatch(value) and len(value) <= 63), value
        if group_name != "head":
            assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


# --- the entrypoint: actionlab's own parser and config -------------------------------------------------


def parse_entrypoint(entrypoint: str):
    """argparse's view of a `python -m actionlab ...` entrypoint (KubeRay runs it through bash)."""
    from actionlab.cli import build_parser

    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "actionlab"], f"not a `python -m actionlab` command: {entrypoint!r}"
    try:
        return build_parser().parse_args(argv[3:])
    except SystemExit:
        raise AssertionError(f"actionlab's CLI refuses the entrypoint {entrypoint!r}") from None


def resolve_entrypoint(args):
    from actionlab.config import load_recipe, resolve

    return resolve(load_recipe(args.recipe), args.set)


@pytest.fixture(scope="module")
def train_args():
    return parse_entrypoint(_rayjob()["spec"]["entrypoint"])


@pytest.fixture(scope="module")
def train_config(train_args):
    return resolve_entrypoint(train_args)


def test_the_entrypoint_is_a_train_command_on_a_shipped_recipe(train_args, train_config):
    from actionlab.cli.train import run_train
    from actionlab.config import shipped_recipes

    assert train_args.fn is run_train
    assert train_args.recipe in shipped_recipes()
    # Every path a worker reads or writes is on S3: a node-local one would be refused on a cluster.
    assert storage.is_remote(train_config.data.manifest) and train_config.data.manifest.startswith("s3://")
    assert train_config.storage.uri.startswith("s3://")
    assert train_args.register


def test_a_broken_entrypoint_fails_the_checks():
    entrypoint = _rayjob()["spec"]["entrypoint"]
    with pytest.raises(AssertionError, match="refuses"):
        parse_entrypoint(entrypoint.replace("--set", "--sett", 1))
    with pytest.raises(AssertionError, match="refuses"):
        parse_entrypoint(entrypoint.replace(" train ", " trian ", 1))
    with pytest.raises(FileNotFoundError, match="recipe 'tsm_r50_sthv3' not found"):
        resolve_entrypoint(parse_entrypoint(entrypoint.replace("tsm_r50_sthv2", "tsm_r50_sthv3")))
    with pytest.raises(ValueError, match="data.manfest"):
        resolve_entrypoint(parse_entrypoint(entrypoint.replace("data.manifest=", "data.manfest=")))


def test_the_cluster_fits_the_run(train_config):
    """The shape the entrypoint asks for exists: GPUs for every worker at the start (the job's cluster is
    ready, with `replicas` pods, before the driver checks capacity), CPUs per worker, decode nodes."""
    groups = _groups(_rayjob())
    assert groups["head"]["rayStartParams"].get("num-cpus") == "0", "the head would take Train workers or decode tasks"
    compute = train_config.compute
    assert compute.use_gpu is True
    gpu_groups = [g for n, g in groups.items() if GPU in _container(g)["resources"].get("limits", {})]
    assert len(gpu_groups) == 1
    (gpu,) = gpu_groups
    limits = _container(gpu)["resources"]["limits"]
    per_pod = int(limits[GPU])
    assert gpu["replicas"] * per_pod >= compute.num_workers
    # Not below the run's size: the autoscaler would reap GPU pods left idle while the rest start up,
    # and the driver would then find fewer GPUs than workers.
    assert gpu["minReplicas"] * per_pod >= compute.num_workers
    assert compute.min_workers is not None and compute.min_workers < compute.num_workers, \
        "elastic: a lost pod costs a restart, not the run"
    assert compute.cpus_per_worker * per_pod <= float(limits["cpu"])

    assert train_config.data.engine == "ray"
    decode = [g for g in groups.values() if (g.get("labels") or {}).get(DECODE_LABEL[0]) == DECODE_LABEL[1]]
    assert decode, f"no worker group carries the decode label {DECODE_LABEL}"
    for group in decode:
        assert GPU not in _container(group)["resources"].get("limits", {})
        assert group["maxReplicas"] >= group["minReplicas"] >= 1


# --- runtime env, image, credentials -------------------------------------------------------------------


def test_the_runtime_env_is_platform_runtime_env():
    shipped = yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"])
    assert shipped == yaml.safe_load((REPO / "platform" / "runtime_env.yaml").read_text())
    # Its relative paths resolve in the submitter pod, i.e. in the image's copy of the repository.
    assert _rayjob()["spec"]["submissionMode"] == "K8sJobMode"


def test_every_pod_runs_the_one_image_at_the_pinned_versions():
    job = _rayjob()
    images = {_container(g)["image"] for g in _groups(job).values()}
    assert len(images) == 1, images
    (image,) = images
    assert image.rsplit(":", 1)[1] == _pyproject()["project"]["version"]
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == _pinned("ray")


def test_credentials_come_from_the_service_account_not_the_file():
    text = RAYJOB_FILE.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id in the manifest"
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    for name, group in _groups(_rayjob()).items():
        pod = group["template"]["spec"]
        account = pod.get("serviceAccountName")
        assert ("ServiceAccount", account) in docs, f"{name}: no service account from this file"
        assert docs["ServiceAccount", account]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        container = _container(group)
        for var in container.get("env", []):
            assert not (jobs._SECRET_NAME.search(var["name"]) and "value" in var), f"{name}: literal {var['name']}"
        maps = [s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s]
        assert maps and all(("ConfigMap", m) in docs for m in maps), f"{name}: ConfigMap not in this file"
        for m in maps:
            data = docs["ConfigMap", m]["data"]
            assert "MLFLOW_TRACKING_URI" in data
            assert not [k for k in data if jobs._SECRET_NAME.search(k)], "credentials belong in a Secret"


# --- the Dockerfile -----------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the build context.

    Docker's rules (Go's filepath.Match plus `**`): `*` and `?` stay within one path segment, `**`
    spans any number, a match on a directory leaves out what is under it, the last matching line
    wins and `!` brings a path back.
    """
    def regex(pattern: str) -> str:
        out, i = "", 0
        pattern = pattern.strip("/")
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
        return out + "(?:/.*)?"

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if re.fullmatch(regex(pattern.lstrip("!")), path):
            ignored = not negate
    return ignored


def test_dockerignore_matching_follows_docker():
    patterns = ["build", "**/*.pyc", "data", "*.md", "!README.md"]
    assert dockerignored("build/lib/x.py", patterns) and not dockerignored("platform/build.py", patterns)
    assert dockerignored("workloads/__pycache__/tsm.cpython-311.pyc", patterns) and dockerignored("a.pyc", patterns)
    assert dockerignored("data", patterns) and not dockerignored("platform/actionlab/data/manifest.py", patterns)
    assert dockerignored("NOTES.md", patterns) and not dockerignored("README.md", patterns)
    assert not dockerignored("docs/NOTES.md", patterns)


def test_the_image_is_ray_at_the_pinned_version_with_a_matching_python_and_cuda():
    import torch
    from packaging.specifiers import SpecifierSet

    froms = [args for op, args in _dockerfile() if op == "FROM"]
    assert len(froms) == 1, "one stage: the image that runs is the image that was built"
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-cu(?P<cu>\d+)", froms[0])
    assert match, f"base image {froms[0]!r} is not an official Ray CUDA image (rayproject/ray:X.Y.Z-pyXY-cuXYZ)"
    assert match["ray"] == _pinned("ray")
    python = f"{match['py']}.{match['minor']}"
    assert python in SpecifierSet(_pyproject()["project"]["requires-python"])
    # The installed torch is the pinned one; the image's CUDA is the CUDA it was built for.
    assert torch.__version__.split("+")[0] == _pinned("torch")
    if torch.version.cuda:
        assert match["cu"] == torch.version.cuda.replace(".", ""), \
            f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, the image is cu{match['cu']}"


def test_the_image_installs_pyproject_and_the_package_as_a_non_root_user():
    steps = _dockerfile()
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "pyproject.toml" in runs and "['project']['dependencies']" in runs, \
        "dependencies not read from pyproject.toml"
    assert re.search(r"pip install [^&]*(?<![\w/-])\.(?:\s|$)", runs), "the package itself is not installed"
    assert "==" not in runs and "requirements" not in " ".join(a for op, a in steps if op in ("COPY", "ADD")), \
        "a second dependency list: versions belong in pyproject.toml"
    copies = [args for op, args in steps if op in ("COPY", "ADD")]
    assert not [c for c in copies if ".venv" in c]
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for op, args in steps:
        if op in ("ENV", "ARG"):
            name = args.split("=")[0].split()[0]
            assert not jobs._SECRET_NAME.search(name), f"{op} {name}: secrets stay out of images"
    # The repository lands in the WORKDIR, where the runtime env's relative paths are resolved.
    workdir = [args for op, args in steps if op == "WORKDIR"][-1]
    assert any(re.fullmatch(r"(--chown=\S+\s+)?\.\s+\./?", c) for c in copies), copies
    assert workdir.startswith("/")


def test_the_build_context_holds_the_code_and_nothing_local():
    patterns = _dockerignore_patterns()
    env = yaml.safe_load((REPO / "platform" / "runtime_env.yaml").read_text())
    needed = ["pyproject.toml", _pyproject()["project"]["readme"], "platform/actionlab/cli/__init__.py", "workloads/__init__.py",
              "workloads/recipes/tsm_r50_sthv2.yaml", "tune_spaces/__init__.py", *env["py_modules"], ".gitignore"]
    assert [p for p in needed if dockerignored(p, patterns)] == []
    local = [".venv/bin/python", ".git/HEAD", "build/lib/actionlab/cli/__init__.py", "actionlab.egg-info/PKG-INFO",
             "platform/actionlab.egg-info/PKG-INFO", "platform/actionlab/__pycache__/cli.cpython-311.pyc",
             ".pytest_cache/v/cache/nodeids", ".actionlab/mlflow.db", "data/motion/videos/a.mp4",
             "workloads/weights.pt", "mlruns/0/meta.yaml"]
    assert [p for p in local if not dockerignored(p, patterns)] == []


def _shell_commands(text: str, starts: tuple[str, ...]) -> list[list[str]]:
    """The argv of each command in `text` (comment marks and `\\` continuations undone) that begins
    with one of `starts`."""
    commands, current = [], None
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if current is None and line.startswith(starts):
            current = ""
        if current is None:
            continue
        current += " " + line.rstrip("\\").split(" # ")[0]
        if not line.endswith("\\"):
            commands.append(shlex.split(current))
            current = None
    return commands


def _check_actionlab_argv(argv: list[str]) -> None:
    """A documented `actionlab ...` / `python -m actionlab ...` / `... submit -- ...` command parses and resolves."""
    if "--" in argv:  # `actionlab submit ... -- train ...`, `ray job submit ... -- python -m actionlab ...`
        inner = argv[argv.index("--") + 1:]
        argv = inner if inner[:3] == ["python", "-m", "actionlab"] else ["python", "-m", "actionlab", *inner]
    elif argv[0] == "actionlab":
        argv = ["python", "-m", *argv]
    args = parse_entrypoint(shlex.join(argv))
    if getattr(args, "recipe", None):
        resolve_entrypoint(args)


def test_cluster_yaml_installs_the_same_dependency_list_and_runs_a_valid_command():
    """`ray up platform/cluster.yaml` builds nodes from the same pyproject.toml as the image and its
    documented command parses with the CLI."""
    path = REPO / "platform" / "cluster.yaml"
    cluster = yaml.safe_load(path.read_text())
    (mount,) = [remote for remote, local in cluster["file_mounts"].items() if local in (".", "./")]
    assert any(re.search(rf"pip install .*{re.escape(mount)}\s*$", cmd) for cmd in cluster["setup_commands"])
    (command,) = _shell_commands(path.read_text(), ("actionlab submit",))
    _check_actionlab_argv(command)


def test_the_readme_commands_from_laptop_to_cluster_parse():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From laptop to cluster"):]
    section = section[:section.index("\n## ", 1)]
    commands = _shell_commands(section, ("actionlab ", "ray job submit"))
    assert len(commands) == 3, commands
    for argv in commands:
        _check_actionlab_argv(argv)
    assert "kubectl apply -f platform/kuberay/rayjob.yaml" in section
    assert f"docker build -t registry.example.com/actionlab:{_pyproject()['project']['version']} ." in section
