"""Tests of deploy/: the container image, compose file, Kubernetes manifests and systemd unit.

No Docker engine or cluster exists where the tests run, so they check what can be
checked without one. Two test classes, one ctest test each (deploy/CMakeLists.txt):

  DeployLintTest   every YAML file passes yamllint; `docker-compose config -q` accepts
                   the compose file; the Kubernetes manifests validate against the
                   Kubernetes schemas (validate_kubernetes.mjs); `systemd-analyze verify`
                   accepts the unit; the Dockerfile's build stage runs the README's
                   commands and nothing else, and its runtime stage installs exactly the
                   Debian packages of the libraries the binaries link. Each checker is
                   also shown a broken copy, to prove that it can fail.
  DeployFlagsTest  for each of Dockerfile, compose file, DaemonSet and systemd unit: the
                   ports it declares (EXPOSE, published ports, containerPorts, probes,
                   scrape annotations, Service ports) match the flags it passes to
                   iommu-brokerd, and the real binary started with those flags (config
                   file, Unix socket and ports moved to the test's own) serves: healthy
                   on its API and health listeners, metrics on /metrics, the compose
                   load generator's `iommuctl bench` command run against it for a
                   second, and a clean exit on SIGTERM.

Paths come from the environment (ctest sets them): IOMMU_SOURCE_DIR, IOMMU_BROKERD_PATH,
IOMMUCTL_PATH, IOMMU_NODE_PATH. Every wait has a deadline only so that a broken process
cannot hang the test; no assertion depends on how long anything takes.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

import yaml

SOURCE_DIR = os.environ.get(
    "IOMMU_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEPLOY_DIR = os.path.join(SOURCE_DIR, "deploy")
KUBERNETES_DIR = os.path.join(DEPLOY_DIR, "kubernetes")
DOCKERFILE = os.path.join(DEPLOY_DIR, "Dockerfile")
COMPOSE_FILE = os.path.join(DEPLOY_DIR, "compose.yaml")
SYSTEMD_UNIT = os.path.join(DEPLOY_DIR, "systemd", "iommu-brokerd.service")
VALIDATOR = os.path.join(DEPLOY_DIR, "tests", "validate_kubernetes.mjs")
BROKERD = os.environ.get("IOMMU_BROKERD_PATH", "")
IOMMUCTL = os.environ.get("IOMMUCTL_PATH", "")
NODE = os.environ.get("IOMMU_NODE_PATH") or shutil.which("node")

BROKER_SERVICE = "iommu_broker.v1.IommuBroker"
DEADLINE_SECONDS = 60
# The flags that name a listen address, and the config file.
ADDRESS_FLAGS = ("listen", "health_listen", "metrics_listen")


def read_file(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_yaml(path):
    return yaml.safe_load(read_file(path))


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Flags and addresses ----------------------------------------------------------


def parse_flags(argv):
    """{"listen": "unix:/x", ...} from ["--listen=unix:/x", ...]; every argument is --name=value."""
    flags = {}
    for arg in argv:
        match = re.fullmatch(r"--([a-z_]+)=(.*)", arg)
        if match is None:
            raise AssertionError(f"argument {arg!r} is not of the form --name=value")
        flags[match.group(1)] = match.group(2)
    return flags


def tcp_port(address):
    """The port of a host:port address, None for unix:/path or none."""
    if address.startswith("unix:") or address == "none":
        return None
    return int(address.rsplit(":", 1)[1])


def tcp_ports(flags):
    """{flag: port} for the flags that listen on TCP."""
    ports = {}
    for name in ADDRESS_FLAGS:
        port = tcp_port(flags.get(name, "none"))
        if port is not None:
            ports[name] = port
    return ports


# --- The Dockerfile ----------------------------------------------------------------


def dockerfile_stages():
    """[(stage name, [(INSTRUCTION, arguments)])], continuation lines joined."""
    text = re.sub(r"\\\n", " ", read_file(DOCKERFILE))
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        arguments = " ".join(arguments.split())
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?: AS (\S+))?", arguments, re.IGNORECASE)
            stages.append((match.group(2) or match.group(1), []))
        elif stages:
            stages[-1][1].append((instruction, arguments))
    return stages


def stage(name):
    for stage_name, instructions in dockerfile_stages():
        if stage_name == name:
            return instructions
    raise AssertionError(f"deploy/Dockerfile has no stage {name!r}")


def instructions(stage_instructions, name):
    return [arguments for instruction, arguments in stage_instructions if instruction == name]


def exec_form(arguments):
    """The JSON array of an exec-form CMD, ENTRYPOINT or HEALTHCHECK CMD."""
    value = json.loads(arguments)
    if not isinstance(value, list):
        raise AssertionError(f"{arguments!r} is not in exec form")
    return value


class Image:
    """What deploy/Dockerfile's runtime stage sets up."""

    def __init__(self):
        runtime = stage("runtime")
        (entrypoint,) = instructions(runtime, "ENTRYPOINT")
        (command,) = instructions(runtime, "CMD")
        self.entrypoint = exec_form(entrypoint)
        self.command = exec_form(command)
        self.exposed = {int(port) for line in instructions(runtime, "EXPOSE") for port in line.split()}
        self.env = dict(line.split("=", 1) for line in instructions(runtime, "ENV"))
        (healthcheck,) = instructions(runtime, "HEALTHCHECK")
        self.healthcheck = exec_form(healthcheck.split(" CMD ", 1)[1])
        self.user = instructions(runtime, "USER")
        # Files the image holds at a path: {image path: source path}.
        self.files = {}
        for line in instructions(runtime, "COPY"):
            words = line.split()
            if words[0].startswith("--from="):
                continue
            self.files[words[-1]] = os.path.join(SOURCE_DIR, words[0])
        self.apt_packages = set()
        for line in instructions(runtime, "RUN"):
            match = re.search(r"apt-get install -y --no-install-recommends (.*?) &&", line)
            if match:
                self.apt_packages |= set(match.group(1).split())


# --- The README's commands ---------------------------------------------------------


def readme_setup_commands():
    """The fenced shell commands of README.md's set-up section."""
    readme = read_file(os.path.join(SOURCE_DIR, "README.md"))
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)


# --- Debian packages of the binaries' libraries ------------------------------------


def needed_libraries(binary):
    output = run(["readelf", "-d", binary]).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", output)


def library_paths(binary):
    """{soname: resolved path} as the dynamic linker resolves them."""
    paths = {}
    for line in run(["ldd", binary]).stdout.splitlines():
        match = re.match(r"\s*(\S+) => (\S+)", line)
        if match:
            paths[match.group(1)] = os.path.realpath(match.group(2))
    return paths


def debian_package(path):
    output = run(["dpkg-query", "-S", path]).stdout
    if not output:
        # usrmerge: dpkg knows /lib paths, ldd reports /usr/lib (or the reverse).
        alternative = path[4:] if path.startswith("/usr/") else "/usr" + path
        output = run(["dpkg-query", "-S", alternative]).stdout
    return output.split(":", 1)[0].strip()


def base_image_packages():
    """apt and what it depends on: in every Debian image, bookworm-slim included."""
    output = run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                  "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", "apt"]).stdout
    return {line.strip() for line in output.splitlines() if line and not line.startswith((" ", "<"))}


class DeployLintTest(unittest.TestCase):
    """Static checks of every file in deploy/; each checker is also shown a broken file."""

    def assert_succeeds(self, argv, **kwargs):
        result = run(argv, **kwargs)
        self.assertEqual(result.returncode, 0, f"{shlex.join(argv)}\n{result.stdout}{result.stderr}")
        return result

    def assert_fails(self, argv, expected_output, **kwargs):
        result = run(argv, **kwargs)
        self.assertNotEqual(result.returncode, 0, f"{shlex.join(argv)} accepted a broken file")
        self.assertIn(expected_output, result.stdout + result.stderr)

    def broken_copy(self, source, old, new):
        """A copy of `source` (a file or directory: then `old` -> `new` in every file) in a temp dir."""
        directory = tempfile.mkdtemp(prefix="deploy_test_")
        self.addCleanup(shutil.rmtree, directory)
        target = os.path.join(directory, os.path.basename(source))
        if os.path.isdir(source):
            shutil.copytree(source, target)
            files = [os.path.join(target, name) for name in os.listdir(target)]
        else:
            shutil.copy(source, target)
            files = [target]
        replaced = False
        for path in files:
            text = read_file(path)
            if old in text:
                replaced = True
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text.replace(old, new, 1))
        self.assertTrue(replaced, f"{old!r} is not in {source}")
        return target

    # yamllint --------------------------------------------------------------------

    def test_every_yaml_file_passes_yamllint(self):
        self.assert_succeeds(["yamllint", "--strict", "."], cwd=SOURCE_DIR)

    def test_yamllint_fails_on_a_broken_file(self):
        broken = self.broken_copy(os.path.join(KUBERNETES_DIR, "service.yaml"), "  clusterIP: None",
                                  "  clusterIP: None\n  clusterIP: None")
        self.assert_fails(["yamllint", "--strict", "-c", os.path.join(SOURCE_DIR, ".yamllint"), broken],
                          "duplication of key")

    # docker-compose ---------------------------------------------------------------

    def test_compose_file_is_valid(self):
        self.assert_succeeds(["docker-compose", "-f", COMPOSE_FILE, "config", "-q"])

    def test_compose_check_fails_on_a_broken_file(self):
        broken = os.path.join(DEPLOY_DIR, ".compose-broken-test.yaml")
        self.addCleanup(lambda: os.path.exists(broken) and os.remove(broken))
        # Next to the original, so that its relative paths resolve the same.
        with open(broken, "w", encoding="utf-8") as f:
            f.write(read_file(COMPOSE_FILE).replace("    read_only: true", "    read_only: maybe", 1))
        self.assert_fails(["docker-compose", "-f", broken, "config", "-q"], "read_only")

    # Kubernetes -----------------------------------------------------------------

    def test_kubernetes_manifests_match_the_schemas(self):
        self.assert_succeeds([NODE, VALIDATOR, KUBERNETES_DIR])

    def test_kubernetes_check_fails_on_broken_manifests(self):
        cases = [
            # (what is broken, replaced, by, the error expected)
            ("a wrong type", "containerPort: 9464", "containerPort: metrics", "containerPort must be integer"),
            ("an unknown field", "readinessProbe:", "readinesProbe:",
             "unknown field /spec/template/spec/containers/0/readinesProbe"),
            ("a missing config file", "      - iommu-brokerd.textproto", "      - missing.textproto",
             "missing.textproto does not exist"),
            ("a dangling port name", "targetPort: metrics", "targetPort: prometheus",
             "targetPort prometheus names no container port"),
            ("a bad PodMonitor", "    - port: metrics", "    - prot: metrics",
             "unknown field /spec/podMetricsEndpoints/0/prot"),
        ]
        for what, old, new, expected in cases:
            with self.subTest(what):
                self.assert_fails([NODE, VALIDATOR, self.broken_copy(KUBERNETES_DIR, old, new)], expected)

    # systemd ----------------------------------------------------------------------

    def verify_unit(self, unit_text):
        """systemd-analyze verify on the unit with ExecStart pointing at the built binary."""
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze is not installed: the unit is not verified")
        directory = tempfile.mkdtemp(prefix="deploy_test_")
        self.addCleanup(shutil.rmtree, directory)
        unit = os.path.join(directory, "iommu-brokerd.service")
        with open(unit, "w", encoding="utf-8") as f:
            f.write(unit_text.replace("/usr/local/bin/iommu-brokerd", BROKERD))
        return run(["systemd-analyze", "verify", unit])

    def test_systemd_unit_verifies_without_a_warning(self):
        result = self.verify_unit(read_file(SYSTEMD_UNIT))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout + result.stderr, "")

    def test_systemd_check_fails_on_a_broken_unit(self):
        result = self.verify_unit(read_file(SYSTEMD_UNIT).replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
        self.assertIn("Unknown key 'NoNewPrivilege'", result.stdout + result.stderr)

    # Dockerfile -------------------------------------------------------------------

    def test_build_stage_runs_the_readme_commands_and_nothing_else(self):
        commands = readme_setup_commands()
        self.assertEqual(len(commands), 2, "README.md's set-up section has two commands")
        readme_scripts = [shlex.split(command) for command in commands]
        build = stage("build")
        runs = [shlex.split(arguments) for arguments in instructions(build, "RUN")]
        # The README says both commands call scripts/install-deps.sh first; the
        # image runs it alone first only so that its layer is cached.
        allowed = [words for words in readme_scripts] + [["bash", "scripts/install-deps.sh"]]
        for words in runs:
            self.assertTrue(any(words[:len(prefix)] == prefix for prefix in allowed),
                            f"the build stage runs {shlex.join(words)!r}, not a README command")
        for prefix in readme_scripts:
            self.assertTrue(any(words[:len(prefix)] == prefix for words in runs),
                            f"the build stage never runs the README command {shlex.join(prefix)!r}")
        # What the runtime stage takes from the build stage is what run.sh builds.
        run_script = read_file(os.path.join(SOURCE_DIR, "scripts", "run.sh"))
        for line in instructions(stage("runtime"), "COPY"):
            if line.startswith("--from=build"):
                for source in line.split()[1:-1]:
                    self.assertTrue(source.startswith("/src/build-release/"), source)
                    self.assertIn(os.path.basename(source), run_script,
                                  f"scripts/run.sh does not build {source}")

    def test_runtime_stage_installs_exactly_the_libraries_the_binaries_link(self):
        expected = set()
        base = base_image_packages()
        self.assertIn("libc6", base)
        for binary in (BROKERD, IOMMUCTL):
            paths = library_paths(binary)
            for soname in needed_libraries(binary):
                self.assertIn(soname, paths, f"ldd did not resolve {soname} of {binary}")
                package = debian_package(paths[soname])
                self.assertTrue(package, f"no Debian package owns {paths[soname]}")
                if package not in base:
                    expected.add(package)
        self.assertEqual(Image().apt_packages, expected)

    def test_runtime_image_runs_as_a_non_root_user_with_oci_labels(self):
        image = Image()
        self.assertEqual(image.user, ["65532:65532"])
        labels = " ".join(instructions(stage("runtime"), "LABEL"))
        for label in ("title", "description", "version", "revision"):
            self.assertIn(f"org.opencontainers.image.{label}=", labels)


# --- Running the binary with a deployment's flags -----------------------------------


class Deployment:
    """iommu-brokerd's flags in one deployment file, and where its files come from."""

    def __init__(self, name, argv, files):
        self.name = name
        self.flags = parse_flags(argv)
        self.files = files  # {path the deployment gives: source file}


def docker_deployment():
    image = Image()
    return Deployment("Dockerfile", image.command, image.files)


def compose_broker():
    return load_yaml(COMPOSE_FILE)["services"]["broker"]


def compose_deployment():
    # Without a command of its own, the broker runs the image's.
    argv = compose_broker().get("command", Image().command)
    return Deployment("compose.yaml", argv, Image().files)


def daemonset():
    return load_yaml(os.path.join(KUBERNETES_DIR, "daemonset.yaml"))


def broker_container(pod_spec):
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "iommu-brokerd"]
    return container


def kubernetes_deployment():
    pod = daemonset()["spec"]["template"]["spec"]
    container = broker_container(pod)
    config_volume = next(v for v in pod["volumes"] if "configMap" in v)
    mount = next(m for m in container["volumeMounts"] if m["name"] == config_volume["name"])
    kustomization = load_yaml(os.path.join(KUBERNETES_DIR, "kustomization.yaml"))
    (generator,) = [g for g in kustomization["configMapGenerator"]
                    if g["name"] == config_volume["configMap"]["name"]]
    files = {os.path.join(mount["mountPath"], os.path.basename(name)): os.path.join(KUBERNETES_DIR, name)
             for name in generator["files"]}
    return Deployment("daemonset.yaml", container["args"], files)


def systemd_exec_start():
    text = re.sub(r"\\\n\s*", " ", read_file(SYSTEMD_UNIT))
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line[len("ExecStart="):])


def systemd_deployment():
    # The unit's header installs deploy/iommu-brokerd.textproto as its config.
    files = {"/etc/iommu-broker/iommu-brokerd.textproto": os.path.join(DEPLOY_DIR, "iommu-brokerd.textproto")}
    return Deployment("iommu-brokerd.service", systemd_exec_start()[1:], files)


class Broker:
    """iommu-brokerd started with a deployment's flags, moved into `directory`."""

    def __init__(self, deployment, directory):
        self.flags = {}
        for name, value in deployment.flags.items():
            if name == "config":
                if value not in deployment.files:
                    raise AssertionError(f"{deployment.name}: --config={value} is no file the deployment provides")
                value = deployment.files[value]
            elif name in ADDRESS_FLAGS and value.startswith("unix:"):
                value = "unix:" + os.path.join(directory, os.path.basename(value))
            elif name in ADDRESS_FLAGS and value != "none":
                value = f"{value.rsplit(':', 1)[0]}:{free_port()}"
            self.flags[name] = value
        self.log_path = os.path.join(directory, "brokerd.log")
        self.log = open(self.log_path, "w", encoding="utf-8")
        argv = [BROKERD] + [f"--{name}={value}" for name, value in self.flags.items()]
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def connect_address(self, flag):
        address = self.flags[flag]
        if address.startswith("unix:"):
            return address
        host, port = address.rsplit(":", 1)
        return f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"

    def health(self, flag, service=""):
        """iommuctl health on the listener of `flag`, waiting for the broker to come up."""
        argv = [IOMMUCTL, f"--target={self.connect_address(flag)}", "--timeout=5s", "health"]
        if service:
            argv.append(f"--service={service}")
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            result = run(argv)
            if result.returncode == 0 or time.monotonic() > deadline or self.process.poll() is not None:
                return result.stdout.strip() or result.stderr.strip()
            time.sleep(0.2)

    def metrics(self):
        url = f"http://{self.connect_address('metrics_listen')}/metrics"
        with urllib.request.urlopen(url, timeout=DEADLINE_SECONDS) as response:
            return response.read().decode()

    def stop(self):
        """SIGTERM; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.log.close()

    def output(self):
        return read_file(self.log_path)


class DeployFlagsTest(unittest.TestCase):
    """Each deployment's ports match its flags, and the binary serves with those flags."""

    def assert_serves(self, deployment, client_command=None):
        """The broker serves with the deployment's flags; `client_command` (iommuctl's
        arguments, --target first) runs against it and must succeed."""
        directory = tempfile.mkdtemp(prefix="deploy_flags_")
        self.addCleanup(shutil.rmtree, directory)
        broker = Broker(deployment, directory)
        try:
            self.assertEqual(broker.health("listen"), "SERVING", broker.output())
            if "health_listen" in broker.flags:
                self.assertEqual(broker.health("health_listen", BROKER_SERVICE), "SERVING", broker.output())
            if broker.flags.get("metrics_listen", "none") != "none":
                self.assertIn("iommu_broker_build_info", broker.metrics())
            if client_command is not None:
                argv = [IOMMUCTL, f"--target={broker.connect_address('listen')}"] + client_command[1:]
                result = run(argv)
                self.assertEqual(result.returncode, 0, f"{shlex.join(argv)}\n{result.stdout}{result.stderr}")
        finally:
            status = broker.stop()
        self.assertEqual(status, 0, f"{deployment.name}: exit status {status}\n{broker.output()}")
        self.assertIn("event=stopped", broker.output())

    def test_dockerfile(self):
        image = Image()
        deployment = docker_deployment()
        self.assertEqual(image.entrypoint, ["iommu-brokerd"])
        self.assertEqual(image.exposed, set(tcp_ports(deployment.flags).values()))
        # The HEALTHCHECK asks the API listener, which iommuctl finds in the environment.
        self.assertEqual(image.healthcheck[0], "iommuctl")
        self.assertIn("health", image.healthcheck)
        self.assertEqual(image.env["IOMMU_BROKER_TARGET"], deployment.flags["listen"])
        self.assert_serves(deployment)

    def test_compose_file(self):
        compose = load_yaml(COMPOSE_FILE)
        services = compose["services"]
        broker = services["broker"]
        deployment = compose_deployment()
        self.assertEqual(broker["build"]["dockerfile"], "deploy/Dockerfile")
        published = {int(port.rsplit(":", 1)[1]) for port in broker["ports"]}
        for flag, port in tcp_ports(deployment.flags).items():
            if flag != "listen":
                self.assertIn(port, published, f"--{flag} port {port} is not published")
        # The other published ports are those of the services in the broker's network namespace.
        prometheus_port = tcp_port(next(arg.split("=", 1)[1] for arg in services["prometheus"]["command"]
                                        if arg.startswith("--web.listen-address=")))
        grafana_port = int(services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"])
        for name in ("prometheus", "grafana"):
            self.assertEqual(services[name]["network_mode"], "service:broker")
        self.assertEqual(published - set(tcp_ports(deployment.flags).values()), {prometheus_port, grafana_port})
        # Prometheus scrapes the broker's metrics port, as dashboards/prometheus/prometheus.yml says.
        scrape = load_yaml(os.path.join(SOURCE_DIR, "dashboards", "prometheus", "prometheus.yml"))
        targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
        self.assertEqual(targets, [f"127.0.0.1:{tcp_ports(deployment.flags)['metrics_listen']}"])
        # The load generator reaches the API through the shared socket volume.
        loadgen = services["loadgen"]
        self.assertEqual(loadgen["profiles"], ["load"])
        self.assertIn(f"--target={deployment.flags['listen']}", loadgen["command"])
        socket_dir = os.path.dirname(deployment.flags["listen"][len("unix:"):])
        for service in (broker, loadgen):
            self.assertIn(f"broker-socket:{socket_dir}", service["volumes"])
        self.assertIn("bench", loadgen["command"])
        # The load generator's own flags, for a second instead of LOADGEN_DURATION.
        loadgen_command = [arg.replace("${LOADGEN_DURATION:-24h}", "1s") for arg in loadgen["command"]]
        self.assertTrue(loadgen_command[0].startswith("--target="))
        self.assert_serves(deployment, client_command=loadgen_command)

    def test_kubernetes_daemonset(self):
        deployment = kubernetes_deployment()
        pod_template = daemonset()["spec"]["template"]
        container = broker_container(pod_template["spec"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        flag_ports = tcp_ports(deployment.flags)
        self.assertEqual(ports, {"health": flag_ports["health_listen"], "metrics": flag_ports["metrics_listen"]})
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            self.assertEqual(container[probe]["grpc"]["port"], ports["health"], probe)
        self.assertEqual(container["readinessProbe"]["grpc"]["service"], BROKER_SERVICE)
        self.assertEqual(pod_template["metadata"]["annotations"]["prometheus.io/port"], str(ports["metrics"]))
        service = load_yaml(os.path.join(KUBERNETES_DIR, "service.yaml"))
        self.assertEqual(service["spec"]["clusterIP"], "None")
        self.assertEqual({p["port"] for p in service["spec"]["ports"]}, set(ports.values()))
        # The API socket is in the hostPath directory node-local clients share.
        socket_dir = os.path.dirname(deployment.flags["listen"][len("unix:"):])
        socket_volume = next(v for v in pod_template["spec"]["volumes"] if "hostPath" in v)
        self.assertEqual(socket_volume["hostPath"]["path"], socket_dir)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        self.assertEqual(mounts[socket_volume["name"]], socket_dir)
        security = container["securityContext"]
        self.assertTrue(security["runAsNonRoot"])
        self.assertTrue(security["readOnlyRootFilesystem"])
        self.assertFalse(security["allowPrivilegeEscalation"])
        self.assertEqual(security["capabilities"]["drop"], ["ALL"])
        self.assertIn("limits", container["resources"])
        self.assertIn("requests", container["resources"])
        self.assert_serves(deployment)

    def test_systemd_unit(self):
        deployment = systemd_deployment()
        self.assertEqual(systemd_exec_start()[0], "/usr/local/bin/iommu-brokerd")
        # Without authentication the API stays on the host's loopback.
        for flag in ("listen", "metrics_listen"):
            self.assertTrue(deployment.flags[flag].startswith("127.0.0.1:"), deployment.flags[flag])
        self.assert_serves(deployment)


if __name__ == "__main__":
    unittest.main()
