"""deploy/: the Grafana dashboard and the Prometheus rules parse, and every metric they name
is one coderd exports, with the labels they use (read from the live registry, not a list);
promtool checks and unit-tests the rules where it is installed (scripts/test installs it)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess

import pytest
import yaml
from harness import ROOT

import daemon
from daemon.batch.journal import PHASES
from daemon.constants import BULK, INTERACTIVE
from daemon.ops import metrics

ENUMS = {"state": set(metrics.CONSUMER_STATES), "phase": set(PHASES), "result": {"hit", "miss"},
         "lane": {BULK, INTERACTIVE}}

RULES = ROOT / "deploy/prometheus/coderd-rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/coderd-rules.test.yml"
DASHBOARD = ROOT / "deploy/grafana/coderd.json"
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
FUNCTIONS = {  # PromQL functions and aggregations these files may call
    "abs", "absent", "avg", "avg_over_time", "ceil", "changes", "clamp_max", "clamp_min", "count", "delta", "deriv",
    "floor", "histogram_quantile", "increase", "irate", "max", "max_over_time", "min", "min_over_time", "rate",
    "round", "scalar", "sum", "time", "vector", "label_values"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"""(\w+)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*\"""")
VALUE = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def exported() -> dict[str, set[str]]:
    """Every series name coderd exports, with its labels: each module imported, then the
    registry's families, with the suffixes the exposition adds."""
    for module in pkgutil.walk_packages(daemon.__path__, "daemon."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    collectors = metrics.REGISTRY._names_to_collectors  # the label names of series not yet observed
    names: dict[str, set[str]] = {}
    for family in metrics.REGISTRY.collect():
        labels = set(collectors[family.name]._labelnames)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""],
                    "summary": ["", "_count", "_sum"]}[family.type]
        for suffix in suffixes:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def grafana_to_promql(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: "5m" if m.group(1).startswith("__") else "x", expr)


def references(expr: str) -> tuple[list[tuple[str, set[str]]], set[str], set[str]]:
    """(selectors as (metric, labels matched), labels grouped by, bare metric names)."""
    selectors = [(name or "", set(MATCHER.findall(body))) for name, body in SELECTOR.findall(expr)]
    grouped = {label.strip() for _, labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}
    bare = GROUPING.sub(" ", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"(?:[^\"\\]|\\.)*\"", " ", bare)
    bare = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", bare)
    names, functions = set(), set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", bare):
        word = match.group(0)
        if word in KEYWORDS:
            continue
        if bare[match.end():].lstrip().startswith("("):
            functions.add(word)
        else:
            names.add(word)
    unknown = functions - FUNCTIONS
    assert not unknown, f"unknown PromQL functions {unknown} in {expr!r}"
    return selectors, grouped, names


def check_expr(expr: str, known: dict[str, set[str]], where: str) -> set[str]:
    """Assert every metric in expr is known and every label it uses exists; return the
    labels its result may carry."""
    selectors, grouped, names = references(expr)
    names |= {name for name, _ in selectors if name}
    missing = names - set(known)
    assert not missing, f"{where}: {sorted(missing)} not exported by coderd (nor recorded by the rules)"
    available = SCRAPE_LABELS.union(*(known[name] for name in names))
    for name, labels in selectors:
        assert name, f"{where}: a selector without a metric name"
        assert labels <= known[name] | SCRAPE_LABELS, f"{where}: {name} has no label {labels - known[name]}"
    for label, _, value in VALUE.findall(expr):  # values of labels coderd sets from a fixed list
        if label in ENUMS and value != "x":
            assert set(value.split("|")) <= ENUMS[label], f"{where}: {label}={value!r}: coderd sets {ENUMS[label]}"
    assert grouped <= available, f"{where}: grouping by {grouped - available}, not labels of {sorted(names)}"
    return available


@pytest.fixture(scope="module")
def rules() -> dict:
    return yaml.safe_load(RULES.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def known(rules) -> dict[str, set[str]]:
    """Exported series, and the series the recording rules define (their labels: what their
    expressions may carry), in file order."""
    names = exported()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                names[rule["record"]] = check_expr(rule["expr"], names, rule["record"])
    return names


def test_rules_parse_and_cover_what_operators_need(rules):
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    for name in ("CoderdQuotaProjectedToRunOut", "CoderdNoReplicaConsuming", "CoderdTokenUnobtainable",
                 "CoderdApiThrottling", "CoderdInteractiveReplyP99AboveTarget", "CoderdBatchJobStuck",
                 "CoderdTaskRestarting", "CoderdNoReplicaActive", "CoderdMoreThanOneReplicaActive"):
        assert name in alerts, name
        assert alerts[name]["labels"]["severity"] in {"info", "warning", "critical"}
        assert alerts[name]["annotations"]["summary"]
    assert 'status="429"' in alerts["CoderdApiThrottling"]["expr"]
    assert "coderd_task_crashes_total" in alerts["CoderdTaskRestarting"]["expr"]
    assert 'state=~"active|standby"' in next(rule["expr"] for group in rules["groups"] for rule in group["rules"]
                                             if rule.get("record") == "job:coderd_consumers_consuming:sum")
    for name, test in (("CoderdNoReplicaActive", "== 0"), ("CoderdMoreThanOneReplicaActive", "> 1")):
        assert alerts[name]["expr"] == f"sum by (job) (coderd_replica_active) {test}"
        assert alerts[name]["labels"]["severity"] == "critical"
    documented = (ROOT / "docs/monitoring.md").read_text()
    assert all(name in documented for name in alerts), "every alert is explained in docs/monitoring.md"


def test_rules_name_only_coderds_metrics_and_labels(rules, known):
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            available = check_expr(rule["expr"], known, name)
            for text in (rule.get("annotations") or {}).values():
                used = set(re.findall(r"\$labels\.(\w+)", text))
                assert used <= available, f"{name}: annotation uses {used - available}"


def test_rule_unit_tests_feed_real_series(known):
    tests = yaml.safe_load(RULE_TESTS.read_text())
    for case in tests["tests"]:
        for series in case["input_series"]:
            check_expr(series["series"], known, "coderd-rules.test.yml")


def test_dashboard_imports_as_is_and_names_only_coderds_metrics(dashboard, known):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    for variable in variables.values():
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"]).groups()
            assert label in check_expr(grafana_to_promql(metric), known, f"variable {variable['name']}")
    ids, exprs = set(), []
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            check_expr(grafana_to_promql(target["expr"]), known, f"panel {panel['title']!r}")
            exprs.append(target["expr"])
    assert any(p.get("repeat") == "instance" for p in dashboard["panels"]), "a row per replica"
    text = "\n".join(exprs)
    for metric in ("coderd_quota_remaining", "coderd_quota_even_pace_remaining", "coderd_coding_calls_total",
                   "coderd_records_per_call_sum", "coderd_reply_latency_seconds_bucket", "coderd_cache_lookups_total",
                   "coderd_batch_jobs", "coderd_api_errors_total", "coderd_task_crashes_total", "coderd_consumer",
                   "coderd_builtin_emulator", "coderd_replica_active", "coderd_takeovers_total"):
        assert metric in text, f"the dashboard shows {metric} as the console does"


def test_the_checker_rejects_what_coderd_does_not_export(known):
    with pytest.raises(AssertionError, match="not exported"):
        check_expr('rate(coderd_coding_call_total[5m])', known, "typo")
    with pytest.raises(AssertionError, match="not exported"):
        check_expr('up{job="coderd"} == 0', known, "not ours")
    with pytest.raises(AssertionError, match="no label"):
        check_expr('coderd_api_errors_total{code="429"}', known, "wrong label")
    with pytest.raises(AssertionError, match="coderd sets"):
        check_expr('coderd_consumer{state="waiting"}', known, "wrong value")  # gone: a replica knows its role
    with pytest.raises(AssertionError, match="grouping by"):
        check_expr('sum by (lane) (coderd_records_total)', known, "wrong grouping")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (scripts/test takes it from Debian's prometheus package as root)")
    return found


def test_promtool_checks_the_rules():
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_alerts_pass():
    done = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                          timeout=60, cwd=RULE_TESTS.parent, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
