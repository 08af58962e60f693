"""Tests of dashboards/: the Grafana dashboards, the Prometheus config and alert rules.

Three test classes, one ctest test each (dashboards/CMakeLists.txt):

  DashboardLintTest      static checks of every dashboard JSON (provisioning-ready:
                         a datasource variable every panel uses, units, descriptions,
                         no ${DS_...} inputs), and every query parses (promtool)
  PrometheusRulesTest    promtool check config / check rules / test rules, and the
                         unit tests cover every alert both ways
  DashboardQueriesTest   the real iommu-brokerd (with --metrics_domain_label), a real
                         Prometheus on loopback scraping it every second, load from
                         `iommuctl bench` and a scripted set of faulting, refused and
                         DMA-API-violating operations; then every panel query of every
                         dashboard runs through Prometheus's query API and must succeed
                         and return data (except the allow-list below)

Python standard library only. Paths come from the environment (ctest sets them):
IOMMU_DASHBOARDS_DIR, IOMMU_BROKERD_PATH, IOMMUCTL_PATH, IOMMU_PROMETHEUS_PATH,
IOMMU_PROMTOOL_PATH. Every wait has a deadline only so that a broken process
cannot hang the test; no assertion depends on how long anything takes. Every
child process is killed in the class clean-up.
"""

import glob
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARDS_DIR = os.environ.get("IOMMU_DASHBOARDS_DIR", os.path.dirname(HERE))
PROMETHEUS_DIR = os.path.join(DASHBOARDS_DIR, "prometheus")
PROVISIONING_DIR = os.path.join(DASHBOARDS_DIR, "provisioning")
PROMTOOL = os.environ.get("IOMMU_PROMTOOL_PATH") or shutil.which("promtool")
PROMETHEUS = os.environ.get("IOMMU_PROMETHEUS_PATH") or shutil.which("prometheus")

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
DATASOURCE_UID = "iommu-broker-prometheus"  # provisioning/datasources/prometheus.yaml
JOB = "iommu-broker"  # prometheus/prometheus.yml's job name

# Grafana's built-in variables, as the tests substitute them. The scrape
# interval in the test is 1 s, so 20 s windows hold ~20 samples.
BUILTINS = {
    "__rate_interval": "20s",
    "__interval": "2s",
    "__interval_ms": "2000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

# Panel queries that may legitimately return no data under the test's load,
# keyed by (dashboard uid, panel title, refId), with the reason. Everything
# else must return data.
MAY_BE_EMPTY = {
    ("iommu-broker-overview", "Stale translations under paranoid", "A"):
        "iommu_broker_stale_translations_total{policy=\"paranoid\"} must stay 0 (a non-zero "
        "value is a broker bug); a broker that creates the series only on the first "
        "increment exposes none. The test checks separately that the alert on it stays "
        "silent.",
}

# Generous deadlines: only a hung or broken process reaches them.
START_DEADLINE_SECONDS = 90
COMMAND_TIMEOUT_SECONDS = 120
SCRAPE_DEADLINE_SECONDS = 120
ALERT_DEADLINE_SECONDS = 120
STOP_TIMEOUT_SECONDS = 60
POLL_SECONDS = 0.25
HTTP_TIMEOUT_SECONDS = 30

# Tries at producing a stale translation under fast (see drive_scripted_operations).
STALE_ATTEMPTS = 3
# Each bench: bounded by its own --duration (and the command timeout).
BENCH_SECONDS = 3
# The load that runs while the queries do; interrupted (SIGINT) at the end.
BACKGROUND_BENCH_SECONDS = 600


# --- Dashboards as data ----------------------------------------------------


def dashboard_paths():
    return sorted(glob.glob(os.path.join(DASHBOARDS_DIR, "*.json")))


def load_dashboards():
    """(path, raw text, parsed JSON) of every dashboard."""
    result = []
    for path in dashboard_paths():
        with open(path) as f:
            text = f.read()
        result.append((path, text, json.loads(text)))
    return result


def all_panels(panels):
    """Every panel, rows included, descending into collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def data_panels(dashboard):
    """Every panel but rows."""
    return [p for p in all_panels(dashboard.get("panels", [])) if p.get("type") != "row"]


def variables(dashboard):
    return dashboard.get("templating", {}).get("list", [])


def variable_query(variable):
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    return query or ""


VARIABLE_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def referenced_variables(text):
    return {m.group(1) or m.group(2) or m.group(3) for m in VARIABLE_RE.finditer(text)}


def substitute(text, values):
    """Replaces $name, ${name}, ${name:format} and [[name]] by values[name] or a built-in."""

    def replace(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise KeyError(f"undefined variable ${name} in {text!r}")

    return VARIABLE_RE.sub(replace, text)


def default_substitution(dashboard):
    """A value per variable for static checks: All's value, else a placeholder."""
    values = {}
    for variable in variables(dashboard):
        if variable.get("includeAll"):
            values[variable["name"]] = variable.get("allValue") or ".*"
        else:
            values[variable["name"]] = "placeholder"
    return values


# --- Processes and HTTP ------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url):
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return 0, ""


def read_file(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def stop_process(process, sig=signal.SIGTERM):
    """Signals one child and waits; kills it if it outlives the timeout."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_promtool(*args):
    if not PROMTOOL:
        raise unittest.SkipTest("promtool not found (Debian package prometheus)")
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_SECONDS)


# --- Static checks ------------------------------------------------------------


class DashboardLintTest(unittest.TestCase):
    """Provisioning-ready dashboards: the rules of dashboards/README.md."""

    @classmethod
    def setUpClass(cls):
        cls.dashboards = load_dashboards()

    def test_dashboards_exist(self):
        names = {os.path.basename(path) for path, _, _ in self.dashboards}
        self.assertTrue({"overview.json", "domain.json"} <= names, names)

    def test_fixed_unique_uids_and_titles(self):
        uids = []
        for path, _, dashboard in self.dashboards:
            with self.subTest(path=path):
                self.assertTrue(dashboard.get("uid"), "no fixed uid")
                self.assertLessEqual(len(dashboard["uid"]), 40, "Grafana uids are at most 40 chars")
                self.assertTrue(dashboard.get("title"))
                self.assertGreaterEqual(dashboard.get("schemaVersion", 0), 36)
                self.assertIsNone(dashboard.get("id"), "a provisioned dashboard has no id")
                uids.append(dashboard["uid"])
        self.assertEqual(len(uids), len(set(uids)), uids)

    def test_no_import_inputs(self):
        # ${DS_...} inputs and __inputs work only with the UI's import, not with
        # file provisioning.
        for path, text, dashboard in self.dashboards:
            with self.subTest(path=path):
                self.assertNotIn("${DS_", text)
                self.assertNotIn("__inputs", dashboard)
                self.assertNotIn("__requires", dashboard)

    def test_datasource_variable(self):
        for path, _, dashboard in self.dashboards:
            with self.subTest(path=path):
                found = [v for v in variables(dashboard) if v.get("type") == "datasource"]
                self.assertEqual(len(found), 1, "exactly one datasource variable")
                self.assertEqual(found[0]["name"], "datasource")
                self.assertEqual(found[0]["query"], "prometheus")
                current = found[0].get("current", {}).get("value")
                if current:
                    self.assertEqual(current, DATASOURCE_UID)

    def test_every_panel_and_query_variable_uses_the_datasource_variable(self):
        for path, _, dashboard in self.dashboards:
            for panel in data_panels(dashboard):
                with self.subTest(path=path, panel=panel.get("title")):
                    self.assertEqual(panel.get("datasource"), DATASOURCE_REF)
                    for target in panel.get("targets", []):
                        self.assertIn(target.get("datasource", DATASOURCE_REF), [DATASOURCE_REF])
            for variable in variables(dashboard):
                if variable.get("type") == "query":
                    with self.subTest(path=path, variable=variable["name"]):
                        self.assertEqual(variable.get("datasource"), DATASOURCE_REF)

    def test_every_panel_has_unit_description_and_queries(self):
        for path, _, dashboard in self.dashboards:
            panels = data_panels(dashboard)
            self.assertTrue(panels, path)
            for panel in panels:
                with self.subTest(path=path, panel=panel.get("title")):
                    self.assertTrue(panel.get("title", "").strip())
                    self.assertTrue(panel.get("description", "").strip(), "no description")
                    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
                    self.assertTrue(unit, "fieldConfig.defaults.unit is not set")
                    targets = panel.get("targets", [])
                    self.assertTrue(targets, "no queries")
                    ref_ids = [t.get("refId") for t in targets]
                    self.assertEqual(len(ref_ids), len(set(ref_ids)), ref_ids)
                    for target in targets:
                        self.assertTrue(target.get("expr", "").strip(), target)

    def test_layout(self):
        for path, _, dashboard in self.dashboards:
            ids = [p.get("id") for p in all_panels(dashboard.get("panels", []))]
            self.assertEqual(len(ids), len(set(ids)), f"{path}: duplicate panel ids")
            for panel in all_panels(dashboard.get("panels", [])):
                with self.subTest(path=path, panel=panel.get("title")):
                    grid = panel.get("gridPos", {})
                    for key in ("h", "w", "x", "y"):
                        self.assertIn(key, grid)
                    self.assertLessEqual(grid["x"] + grid["w"], 24)

    def test_variables_are_defined(self):
        for path, _, dashboard in self.dashboards:
            defined = {v["name"] for v in variables(dashboard)} | set(BUILTINS)
            texts = [variable_query(v) for v in variables(dashboard)]
            for panel in data_panels(dashboard):
                texts.extend(t["expr"] for t in panel.get("targets", []))
                if panel.get("repeat"):
                    self.assertIn(panel["repeat"], defined)
            for text in texts:
                with self.subTest(path=path, query=text):
                    self.assertLessEqual(referenced_variables(text), defined)

    def test_flush_latency_heatmap(self):
        for path, _, dashboard in self.dashboards:
            with self.subTest(path=path):
                heatmaps = [p for p in data_panels(dashboard) if p.get("type") == "heatmap"]
                self.assertTrue(any(
                    t.get("format") == "heatmap"
                    and "iommu_broker_flush_latency_seconds_bucket" in t.get("expr", "")
                    for p in heatmaps for t in p.get("targets", [])))

    def test_domain_dashboard_has_a_domain_variable(self):
        dashboard = next(d for p, _, d in self.dashboards if p.endswith("domain.json"))
        domain = [v for v in variables(dashboard) if v["name"] == "domain"]
        self.assertEqual(len(domain), 1)
        self.assertRegex(variable_query(domain[0]), r"^label_values\(.*,\s*domain\)$")
        for panel in data_panels(dashboard):
            for target in panel["targets"]:
                self.assertIn('domain="$domain"', target["expr"], panel["title"])

    def test_queries_parse(self):
        # promtool parses every expression (with variables substituted) as a
        # recording rule.
        rules = []
        for path, _, dashboard in self.dashboards:
            values = default_substitution(dashboard)
            for panel in data_panels(dashboard):
                for target in panel.get("targets", []):
                    rules.append((f"{os.path.basename(path)}: {panel['title']} {target['refId']}",
                                  substitute(target["expr"], values)))
        with tempfile.TemporaryDirectory(prefix="dashboards_lint.") as tmp:
            path = os.path.join(tmp, "queries.yml")
            with open(path, "w") as f:
                f.write("groups:\n  - name: dashboard_queries\n    rules:\n")
                for i, (_, expr) in enumerate(rules):
                    f.write(f"      - record: dashboard:query_{i}\n")
                    f.write(f"        expr: {json.dumps(expr)}\n")
            result = run_promtool("check", "rules", path)
            self.assertEqual(result.returncode, 0,
                             result.stdout + result.stderr + "\n" +
                             "\n".join(f"query_{i}: {name}: {expr}"
                                       for i, (name, expr) in enumerate(rules)))

    def test_provisioning_files(self):
        with open(os.path.join(PROVISIONING_DIR, "datasources", "prometheus.yaml")) as f:
            datasources = f.read()
        self.assertRegex(datasources, rf"(?m)^\s+uid: {re.escape(DATASOURCE_UID)}\s*$")
        self.assertRegex(datasources, r"(?m)^\s+type: prometheus\s*$")
        with open(os.path.join(PROVISIONING_DIR, "dashboards", "iommu-broker.yaml")) as f:
            providers = f.read()
        self.assertRegex(providers, r"(?m)^\s+type: file\s*$")
        self.assertRegex(providers, r"(?m)^\s+path: /\S+\s*$")


class PrometheusRulesTest(unittest.TestCase):
    """The scrape config and alert rules check, and their unit tests pass."""

    def assert_promtool(self, *args):
        result = run_promtool(*args)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_check_config(self):
        self.assert_promtool("check", "config", "prometheus.yml")

    def test_check_rules(self):
        self.assert_promtool("check", "rules", "alerts.yml")

    def test_unit_tests(self):
        self.assert_promtool("test", "rules", "alerts_test.yml")

    @staticmethod
    def alert_blocks():
        with open(os.path.join(PROMETHEUS_DIR, "alerts.yml")) as f:
            text = f.read()
        blocks = re.split(r"(?m)^\s+- alert: ", text)[1:]
        return {block.split("\n", 1)[0].strip(): block for block in blocks}

    def test_alerts_are_complete(self):
        blocks = self.alert_blocks()
        self.assertEqual(len(blocks), 6, sorted(blocks))
        for name, block in blocks.items():
            with self.subTest(alert=name):
                self.assertRegex(block, r"(?m)^\s+for: \d+[smh]\s*$")
                self.assertRegex(block, r"(?m)^\s+severity: (critical|warning)\s*$")
                self.assertRegex(block, r"(?m)^\s+summary: \S")
                self.assertRegex(block, r"(?m)^\s+description: \S")

    def test_every_alert_is_tested_firing_and_silent(self):
        with open(os.path.join(PROMETHEUS_DIR, "alerts_test.yml")) as f:
            lines = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
        firing, silent = set(), set()
        for line, following in zip(lines, lines[1:]):
            match = re.match(r"alertname: (\w+)$", line)
            if match:
                (silent if following == "exp_alerts: []" else firing).add(match.group(1))
        for name in self.alert_blocks():
            with self.subTest(alert=name):
                self.assertIn(name, firing, "no test where it fires")
                self.assertIn(name, silent, "no test where it stays silent")


# --- Against a real broker and a real Prometheus ------------------------------


class Stack:
    """iommu-brokerd and Prometheus on loopback, with a temporary directory."""

    def __init__(self):
        self.brokerd = os.environ.get("IOMMU_BROKERD_PATH")
        self.iommuctl = os.environ.get("IOMMUCTL_PATH")
        if not self.brokerd or not self.iommuctl:
            raise unittest.SkipTest("IOMMU_BROKERD_PATH / IOMMUCTL_PATH not set (run through ctest)")
        if not PROMETHEUS:
            raise unittest.SkipTest("prometheus not found (Debian package prometheus)")
        self.dir = tempfile.mkdtemp(prefix="dashboards_test.")
        self.broker = None
        self.prometheus = None
        self.background = None
        self.grpc_target = None
        self.metrics_address = None
        self.prometheus_url = None

    # The broker. A port taken between free_port() and the bind (exit status 1)
    # is retried with new ports.
    def start_broker(self):
        log = os.path.join(self.dir, "brokerd.log")
        for _ in range(3):
            grpc_port, metrics_port = free_port(), free_port()
            self.grpc_target = f"127.0.0.1:{grpc_port}"
            self.metrics_address = f"127.0.0.1:{metrics_port}"
            with open(log, "w") as stderr:
                self.broker = subprocess.Popen(
                    [self.brokerd, f"--listen={self.grpc_target}",
                     f"--metrics_listen={self.metrics_address}", "--metrics_domain_label=true"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            deadline = time.monotonic() + START_DEADLINE_SECONDS
            while time.monotonic() < deadline:
                if self.broker.poll() is not None:
                    break
                status, _ = http_get(f"http://{self.metrics_address}/metrics")
                if status == 200 and self.ctl("health", check=False).returncode == 0:
                    return
                time.sleep(POLL_SECONDS)
            if self.broker.poll() == 1 and "cannot be bound" in read_file(log):
                continue
            raise AssertionError(f"iommu-brokerd did not start (exit {self.broker.poll()}):\n"
                                 f"{read_file(log)}")
        raise AssertionError(f"iommu-brokerd could not bind free ports:\n{read_file(log)}")

    def start_prometheus(self, rule_file):
        config = os.path.join(self.dir, "prometheus.yml")
        log = os.path.join(self.dir, "prometheus.log")
        for _ in range(3):
            port = free_port()
            self.prometheus_url = f"http://127.0.0.1:{port}"
            with open(config, "w") as f:
                f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {json.dumps(rule_file)}
scrape_configs:
  - job_name: {JOB}
    static_configs:
      - targets: ['{self.metrics_address}']
""")
            with open(log, "w") as stderr:
                self.prometheus = subprocess.Popen(
                    [PROMETHEUS, f"--config.file={config}",
                     f"--storage.tsdb.path={os.path.join(self.dir, 'tsdb')}",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    cwd=self.dir)
            deadline = time.monotonic() + START_DEADLINE_SECONDS
            while time.monotonic() < deadline and self.prometheus.poll() is None:
                if http_get(f"{self.prometheus_url}/-/ready")[0] == 200:
                    return
                time.sleep(POLL_SECONDS)
            if self.prometheus.poll() is not None and "address already in use" in read_file(log):
                continue
            raise AssertionError(f"prometheus did not start (exit {self.prometheus.poll()}):\n"
                                 f"{read_file(log)}")
        raise AssertionError(f"prometheus could not bind a free port:\n{read_file(log)}")

    def ctl(self, *args, check=True, allowed=(0,)):
        """Runs iommuctl against the broker; with `check`, fails unless it exits in `allowed`."""
        result = subprocess.run([self.iommuctl, "--target", self.grpc_target, *args],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_SECONDS)
        if check and result.returncode not in allowed:
            raise AssertionError(f"iommuctl {' '.join(args)} exited {result.returncode}, "
                                 f"expected one of {allowed}:\n{result.stdout}{result.stderr}")
        return result

    def map(self, device, phys, size, *flags):
        out = self.ctl("map", device, hex(phys), str(size), *flags, "-o", "json").stdout
        return int(json.loads(out)["iova"])

    def start_background_bench(self, *args):
        log = os.path.join(self.dir, "background_bench.log")
        with open(log, "w") as output:
            self.background = subprocess.Popen(
                [self.iommuctl, "--target", self.grpc_target, "bench",
                 f"--duration={BACKGROUND_BENCH_SECONDS}s", *args, "-o", "json"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)

    def query(self, path, **params):
        """GET of a Prometheus API path; returns the decoded JSON (status checked by callers)."""
        url = f"{self.prometheus_url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        status, body = http_get(url)
        try:
            return json.loads(body)
        except ValueError:
            raise AssertionError(f"GET {url}: HTTP {status}: {body!r}") from None

    def logs(self):
        return "\n".join(f"--- {name} ---\n{read_file(os.path.join(self.dir, name))[-4000:]}"
                         for name in ("brokerd.log", "prometheus.log", "background_bench.log"))

    def stop(self):
        # SIGINT: the bench finishes its cycles and removes its domain (exit 130).
        stop_process(self.background, signal.SIGINT)
        stop_process(self.prometheus)
        stop_process(self.broker)
        shutil.rmtree(self.dir, ignore_errors=True)


def drive_scripted_operations(stack):
    """Operations bench does not produce: faults of every reason, refusals, bypass
    requests of every outcome, DMA-API violations of every kind, an explicit flush
    and a stale translation under fast. Domains and devices stay, so that their
    series stay too (and the domain dashboard has several domains to show)."""
    ctl = stack.ctl
    # The longest flush-queue timeout keeps an unmapped range pending, so that
    # a translation of it hits the stale IOTLB entry.
    ctl("domain", "create", "dash-fast", "--policy", "fast", "--flush-queue-timeout", "10s")
    ctl("domain", "create", "dash-paranoid", "--policy", "paranoid")
    ctl("domain", "create", "dash-pt", "--policy", "pt")
    ctl("device", "register", "dash-fast-0", "--allow-bypass")
    ctl("device", "register", "dash-fast-1")
    ctl("device", "register", "dash-paranoid-0", "--dma-mask-bits", "32")
    ctl("device", "register", "dash-pt-0")
    ctl("device", "register", "dash-idle")  # never attached
    ctl("device", "attach", "dash-fast-0", "dash-fast")
    ctl("device", "attach", "dash-fast-1", "dash-fast")
    ctl("device", "attach", "dash-paranoid-0", "dash-paranoid")
    ctl("device", "attach", "dash-pt-0", "dash-pt")

    gib = 1 << 30
    # fast: translate (fills the IOTLB), unmap (queued for up to 10 s),
    # translate again: served stale. Tried again (a bounded number of times)
    # if the queue's timeout flushed it in between on a very slow machine.
    for attempt in range(STALE_ATTEMPTS):
        iova = stack.map("dash-fast-0", 4 * gib + attempt * 0x10000, 8192)
        ctl("translate", "dash-fast-0", hex(iova))
        ctl("translate", "dash-fast-0", hex(iova))
        ctl("unmap", "dash-fast-0", hex(iova), "8192")
        reply = json.loads(ctl("translate", "dash-fast-0", hex(iova), "-o", "json").stdout)
        if reply.get("stale"):
            break
    # DMA-API violations: a wrong-size unmap (refused), a double unmap, a leak
    # (detaching a device with a live mapping); dma_after_unmap comes with the
    # not_mapped faults below.
    leaked = stack.map("dash-fast-1", 4 * gib + 0x100000, 8192)
    ctl("unmap", "dash-fast-1", hex(leaked), "4096", allowed=(0, 1))
    ctl("unmap", "dash-fast-1", hex(leaked + 0x10000000), "4096", allowed=(0, 1))
    ctl("device", "detach", "dash-fast-1")
    # An explicit flush.
    ctl("flush", "dash-fast")
    # Bypass: granted (fast, allow_bypass), fell back (paranoid, prefer),
    # refused (paranoid, require).
    stack.map("dash-fast-0", 5 * gib, 4096, "--bypass", "prefer")
    fell_back = stack.map("dash-paranoid-0", 0x10000, 4096, "--bypass", "prefer")
    ctl("map", "dash-paranoid-0", "0x20000", "4096", "--bypass", "require", allowed=(0, 1))
    # paranoid: a synchronous unmap.
    ctl("unmap", "dash-paranoid-0", hex(fell_back), "4096")
    # Faults: not_mapped, device_not_attached, outside_aperture, above_dma_mask,
    # permission (a read-only mapping written).
    read_only = stack.map("dash-paranoid-0", 0x30000, 4096, "--perm", "r")
    ctl("translate", "dash-paranoid-0", hex(fell_back))
    ctl("translate", "dash-idle", "0x5000", allowed=(0, 1))
    ctl("translate", "dash-paranoid-0", "0x0")
    ctl("translate", "dash-paranoid-0", hex(4 * gib))
    ctl("translate", "dash-paranoid-0", hex(read_only), "--access", "write")
    # Refusals: an unknown device (policy none), memory beyond the broker's
    # 16 GiB (OUT_OF_RANGE).
    ctl("map", "dash-no-such-device", "0x100000", "4096", allowed=(0, 1))
    ctl("map", "dash-fast-0", hex(64 * gib), "4096", allowed=(0, 1))
    # pt: an identity map and its translation.
    ctl("map", "dash-pt-0", hex(6 * gib), "4096")
    ctl("translate", "dash-pt-0", hex(6 * gib))


def bench(stack, policy, *args):
    stack.ctl("bench", f"--duration={BENCH_SECONDS}s", "--threads=2", f"--policy={policy}",
              f"--name-prefix=dash-bench-{policy}", *args, "-o", "json")


class DashboardQueriesTest(unittest.TestCase):
    """Every panel query returns data from a real Prometheus scraping a loaded broker."""

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack()
        cls.addClassCleanup(cls.stack.stop)
        cls.stack.start_broker()
        cls.stack.start_prometheus(os.path.join(PROMETHEUS_DIR, "alerts.yml"))
        cls.start = time.time()
        drive_scripted_operations(cls.stack)
        bench(cls.stack, "paranoid")
        bench(cls.stack, "pt")
        # Runs on while the queries do: rates over the last seconds stay
        # non-zero, and a Batch stream stays open.
        cls.stack.start_background_bench("--threads=2", "--mode=batch", "--batch-size=64",
                                         "--buffers-per-worker=16", "--policy=fast",
                                         "--name-prefix=dash-live")
        bench(cls.stack, "fast")
        cls.wait_for_scrapes(after=time.time())

    @classmethod
    def wait_for_scrapes(cls, after):
        """Waits until Prometheus holds several scrapes, the last taken after `after`."""
        deadline = time.monotonic() + SCRAPE_DEADLINE_SECONDS
        last = None
        while time.monotonic() < deadline:
            if cls.stack.background.poll() is not None:
                raise AssertionError(f"the background bench ended early:\n{cls.stack.logs()}")
            last = cls.stack.query("/api/v1/query",
                                   query=f'count_over_time(up{{job="{JOB}"}}[10m]) >= 5 '
                                         f'and up{{job="{JOB}"}} == 1')
            result = last.get("data", {}).get("result", [])
            if result and float(result[0]["value"][0]) >= after + 3:
                return
            time.sleep(POLL_SECONDS * 4)
        raise AssertionError(f"Prometheus never scraped the broker: {last}\n{cls.stack.logs()}")

    # -- variables

    def resolve_label_values(self, query, values):
        """The values of a label_values(...) variable query in Prometheus, or an error."""
        match = re.fullmatch(r"label_values\((?:(.*),\s*)?(\w+)\)", query.strip())
        if not match:
            return [], f"unsupported variable query {query!r}"
        selector, label = match.group(1), match.group(2)
        params = {"start": f"{self.start:.3f}", "end": f"{time.time():.3f}"}
        if selector:
            params["match[]"] = substitute(selector, values)
        reply = self.stack.query(f"/api/v1/label/{label}/values", **params)
        if reply.get("status") != "success":
            return [], f"{query}: {reply}"
        found = sorted(v for v in reply["data"] if v)
        return found, None if found else f"{query} has no values"

    def variable_combinations(self, dashboard, failures):
        """Substitutions to try: All for multi-value variables, each value otherwise.
        A variable without values is a failure; the panels are still tried."""
        fixed, choices = {}, []
        for variable in variables(dashboard):
            name = variable["name"]
            if variable["type"] == "datasource":
                fixed[name] = DATASOURCE_UID
                continue
            if variable["type"] != "query":
                failures.append(f"{dashboard['uid']}: ${name}: unsupported type {variable['type']}")
                continue
            found, error = self.resolve_label_values(variable_query(variable), fixed)
            if error:
                failures.append(f"{dashboard['uid']}: variable ${name}: {error}")
            if variable.get("includeAll"):
                fixed[name] = variable.get("allValue") or (
                    "(" + "|".join(map(re.escape, found)) + ")" if found else ".*")
            else:
                found = found or ["(no value)"]
                # Later variables see the first value; panels are tried with each.
                fixed[name] = found[0]
                choices.append((name, found))
        names = [name for name, _ in choices]
        combos = []
        for picked in itertools.product(*(found for _, found in choices)):
            combo = dict(fixed)
            combo.update(zip(names, picked))
            combos.append(combo)
        return combos

    # -- the test

    def test_every_panel_query_returns_data(self):
        end = time.time()
        failures = []
        checked = 0
        for path, _, dashboard in load_dashboards():
            combos = self.variable_combinations(dashboard, failures)
            for panel in data_panels(dashboard):
                for target in panel["targets"]:
                    key = (dashboard["uid"], panel["title"], target["refId"])
                    instant_data = range_data = False
                    for values in combos:
                        expr = substitute(target["expr"], values)
                        instant = self.stack.query("/api/v1/query", query=expr, time=f"{end:.3f}")
                        ranged = self.stack.query("/api/v1/query_range", query=expr,
                                                  start=f"{self.start:.3f}", end=f"{end:.3f}",
                                                  step="2s")
                        for kind, reply in (("query", instant), ("query_range", ranged)):
                            if reply.get("status") != "success":
                                failures.append(f"{key}: {kind} {expr}: {reply}")
                        instant_data |= bool(instant.get("data", {}).get("result"))
                        # Data: at least one number (not only NaN, which Grafana
                        # shows as no value).
                        range_data |= any(
                            not math.isnan(float(value))
                            for series in ranged.get("data", {}).get("result", [])
                            for _, value in series["values"])
                    checked += 1
                    if key in MAY_BE_EMPTY:
                        continue
                    if not instant_data:
                        failures.append(f"{key}: the instant query returned no series for any "
                                        f"of {len(combos)} variable values: {target['expr']}")
                    if not range_data:
                        failures.append(f"{key}: the range query returned no number for any "
                                        f"of {len(combos)} variable values: {target['expr']}")
        self.assertGreater(checked, 0)
        if failures:
            self.fail(f"{len(failures)} problems with {checked} panel queries:\n" +
                      "\n".join(failures))

    def test_the_brokers_metrics_pass_promtool_check_metrics(self):
        status, body = http_get(f"http://{self.stack.metrics_address}/metrics")
        self.assertEqual(status, 200)
        if not PROMTOOL:
            self.skipTest("promtool not found (Debian package prometheus)")
        result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                                text=True, timeout=COMMAND_TIMEOUT_SECONDS)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout.strip() + result.stderr.strip(), "", "lint findings")

    def test_every_metric_a_query_uses_is_exposed(self):
        _, body = http_get(f"http://{self.stack.metrics_address}/metrics")
        exposed = set(re.findall(r"^# TYPE (\S+) ", body, flags=re.MULTILINE))
        self.assertIn("iommu_broker_flush_latency_seconds", exposed)
        missing = set()
        for _, _, dashboard in load_dashboards():
            for panel in data_panels(dashboard):
                for target in panel["targets"]:
                    for name in re.findall(r"\biommu_broker_\w+", target["expr"]):
                        family = re.sub(r"_(bucket|count|sum)$", "", name)
                        if name not in exposed and family not in exposed:
                            missing.add((dashboard["uid"], panel["title"], name))
        self.assertFalse(missing, "queries use metrics the broker does not expose")

    def test_paranoid_never_served_a_stale_translation(self):
        reply = self.stack.query(
            "/api/v1/query", query='sum(iommu_broker_stale_translations_total{policy="paranoid"})')
        self.assertEqual(reply.get("status"), "success", reply)
        for series in reply["data"]["result"]:
            self.assertEqual(float(series["value"][1]), 0, series)

    def test_alert_rules_evaluate_on_the_real_metrics(self):
        # Every rule evaluates without error, the DMA-API violations the test
        # caused fire their alert, and nothing fires the paranoid one.
        deadline = time.monotonic() + ALERT_DEADLINE_SECONDS
        rules = alerts = None
        while time.monotonic() < deadline:
            rules = self.stack.query("/api/v1/rules", type="alert")
            alerts = self.stack.query("/api/v1/alerts")
            # A rule not evaluated yet has the zero time, 0001-01-01T00:00:00Z.
            evaluated = [r for g in rules.get("data", {}).get("groups", []) for r in g["rules"]
                         if not r.get("lastEvaluation", "0001").startswith("0001")]
            firing = {a["labels"]["alertname"] for a in alerts.get("data", {}).get("alerts", [])
                      if a.get("state") == "firing"}
            if len(evaluated) == 6 and "IommuBrokerDmaApiViolations" in firing:
                break
            time.sleep(POLL_SECONDS * 4)
        groups = rules["data"]["groups"]
        all_rules = [r for g in groups for r in g["rules"]]
        self.assertEqual(len(all_rules), 6, rules)
        for rule in all_rules:
            with self.subTest(alert=rule["name"]):
                self.assertEqual(rule.get("health"), "ok", rule)
        active = {a["labels"]["alertname"]: a for a in alerts["data"]["alerts"]}
        self.assertIn("IommuBrokerDmaApiViolations", active, alerts)
        self.assertEqual(active["IommuBrokerDmaApiViolations"]["state"], "firing", alerts)
        self.assertNotIn("IommuBrokerStaleTranslationsUnderParanoid", active, alerts)
        self.assertNotIn("IommuBrokerDown", active, alerts)


if __name__ == "__main__":
    unittest.main(argv=sys.argv, verbosity=2)
