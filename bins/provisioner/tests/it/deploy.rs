//! Issue 18, `deploy/`: the systemd unit is hardened and hands secrets over as credentials
//! only, and every metric the Grafana dashboard and the Prometheus rules query is one a running
//! service exports on `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use test_support::process::{Captured, PATIENCE, SHUTDOWN_BOUND, free_port};
use tokio::time::Instant;

use crate::status_api::StatusApi;
use crate::support::{BIN, CapturedProvisioner as _, World, wait_healthy};

/// The repository's `deploy/` directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read_deploy(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Metric names in PromQL

/// Words PromQL reserves that look like identifiers but never name a metric.
const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "start",
    "end",
];

/// Modifiers whose parenthesised list holds label names, not expressions.
const LABEL_LIST_MODIFIERS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// `expr` without its string literals, label matchers (`{...}`) and range or subquery
/// selectors (`[...]`), each replaced by a space.
fn strip_literals_and_matchers(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        let close = match c {
            '"' | '\'' | '`' => c,
            '{' => '}',
            '[' => ']',
            _ => {
                out.push(c);
                continue;
            }
        };
        // Skip to the closing character; inside `{...}` a quoted value may hold `}`, and a
        // quote may be escaped.
        let mut quote = (c == close).then_some(c);
        while let Some(d) = chars.next() {
            match quote {
                Some(q) if d == '\\' && q != '`' => {
                    chars.next();
                }
                Some(q) if d == q => {
                    if c == close {
                        break;
                    }
                    quote = None;
                }
                Some(_) => {}
                None if d == close => break,
                None if matches!(d, '"' | '\'' | '`') => quote = Some(d),
                None => {}
            }
        }
        out.push(' ');
    }
    out
}

/// Removes the label lists of `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`,
/// `group_left (...)` and `group_right (...)` (the keyword stays, its list goes).
fn strip_label_lists(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_ident_start(c) && (i == 0 || !is_ident_char(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push_str(&word);
            if LABEL_LIST_MODIFIERS.contains(&word.to_ascii_lowercase().as_str()) {
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if chars.get(j) == Some(&'(') {
                    match chars[j..].iter().position(|&d| d == ')') {
                        Some(len) => i = j + len + 1,
                        None => i = chars.len(),
                    }
                    out.push(' ');
                }
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects, in order of first appearance: identifiers
/// that are not functions or aggregations (followed by `(`), keywords, numbers or durations,
/// Grafana variables (`$name`), label names in matchers or in `by`/`without`/`on`/`ignoring`
/// lists.
pub(crate) fn metric_names(expr: &str) -> Vec<String> {
    let text = strip_label_lists(&strip_literals_and_matchers(expr));
    let chars: Vec<char> = text.chars().collect();
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (`1e3`, `0x1f`, `5m`, `1h30m`): all of it.
            while i < chars.len() && (is_ident_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if c == '$' {
            i += 1;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            continue;
        }
        if !is_ident_start(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident_char(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let rest: String = chars[i..].iter().collect();
        let rest = rest.trim_start();
        // A function or an aggregation: `f(`, `sum by (..) (`, `sum without (..) (`.
        let call = rest.starts_with('(')
            || ["by", "without"].iter().any(|m| {
                rest.get(..m.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(m))
                    && !rest[m.len()..].starts_with(is_ident_char)
            });
        let keyword = PROMQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
        if call || keyword || names.contains(&word) {
            continue;
        }
        names.push(word);
    }
    names
}

/// The series names a Prometheus text exposition offers to queries: each sample's name, and
/// for each `# TYPE` family the names its samples would have (a histogram's `_bucket`, `_sum`
/// and `_count`; a summary's own name, `_sum` and `_count`; any other type its own name), so a
/// family declared before its first sample counts too.
pub(crate) fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(family), Some(kind)) = (parts.next(), parts.next()) {
                let suffixes: &[&str] = match kind {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    _ => &[""],
                };
                names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Each `(expression, name)` whose metric name `exported` lacks.
pub(crate) fn unknown_names<'a>(
    exprs: &'a [String],
    exported: &BTreeSet<String>,
) -> Vec<(&'a str, String)> {
    exprs
        .iter()
        .flat_map(|e| metric_names(e).into_iter().map(move |n| (e.as_str(), n)))
        .filter(|(_, n)| !exported.contains(n))
        .collect()
}

/// Every `expr` string anywhere in a JSON document (the dashboard's panel targets).
fn json_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

/// The dashboard, parsed, and its query expressions.
fn dashboard_exprs() -> Vec<String> {
    let text = read_deploy("grafana/provisioner-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    exprs
}

/// The rules file, parsed, and each rule's expression; every rule is checked for its parts.
fn rules_exprs() -> Vec<String> {
    let text = read_deploy("prometheus/provisioner-rules.yml");
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("rules file is YAML");
    let groups = doc["groups"].as_sequence().expect("groups: a list");
    assert!(!groups.is_empty(), "no rule groups");
    let mut exprs = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "a group without a name");
        for rule in group["rules"].as_sequence().expect("rules: a list") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: expr"));
            assert!(rule["for"].as_str().is_some(), "{name}: for");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "{name}: labels.severity"
            );
            for part in ["summary", "description"] {
                assert!(
                    rule["annotations"][part]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "{name}: annotations.{part}"
                );
            }
            exprs.push(expr.to_owned());
        }
    }
    exprs
}

#[test]
fn metric_names_skips_functions_keywords_labels_and_durations() {
    let expr = r#"histogram_quantile(0.99, sum by (le, step) (rate(provisioner_step_duration_seconds_bucket{step=~"a|b", x="}"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(expr),
        ["provisioner_step_duration_seconds_bucket"]
    );
    let expr = "max by (instance) (up_a) == 1 and on (instance) max without(job) (b_c) == 0 \
                unless ignoring(code) group_left(route) c:rate5m offset 5m > 1e3 * -Inf";
    assert_eq!(metric_names(expr), ["up_a", "b_c", "c:rate5m"]);
    assert_eq!(
        metric_names("time() - max(last_ts) > 24 * 3600 and on () x_y == 1"),
        ["last_ts", "x_y"]
    );
    assert_eq!(
        metric_names("sum(increase(a_total[15m])) > 0 or vector(0) + a_total"),
        ["a_total"]
    );
    assert!(metric_names(r#"label_replace(vector(1), "dst", "$1", "src", "(.*)")"#).is_empty());
}

#[test]
fn exported_names_include_described_families_and_histogram_series() {
    let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v\"} 1\n\
                # TYPE h_seconds histogram\n# TYPE g gauge\nb 2\n";
    let names = exported_names(text);
    for want in [
        "a_total",
        "h_seconds_bucket",
        "h_seconds_sum",
        "h_seconds_count",
        "g",
        "b",
    ] {
        assert!(names.contains(want), "{want}: {names:?}");
    }
    assert!(
        !names.contains("h_seconds"),
        "a histogram has no bare series"
    );
}

#[test]
fn an_unknown_metric_name_is_reported() {
    let exported = exported_names("# TYPE a_total counter\n# TYPE h histogram\n");
    let exprs = vec![
        "sum(rate(a_total[5m]))".to_owned(),
        r#"rate(provisioner_no_such_metric_total{x="1"}[5m]) / rate(a_total[5m])"#.to_owned(),
        "histogram_quantile(0.5, rate(h[5m]))".to_owned(),
    ];
    let unknown = unknown_names(&exprs, &exported);
    let names: Vec<&str> = unknown.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["provisioner_no_such_metric_total", "h"]);
    assert!(unknown_names(&exprs[..1], &exported).is_empty());
}

#[test]
fn dashboard_and_rules_parse_and_query_metrics() {
    let dashboard = dashboard_exprs();
    let rules = rules_exprs();
    let text = read_deploy("grafana/provisioner-dashboard.json");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(doc["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    for panel in doc["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{}",
                panel["title"]
            );
        }
    }
    for expr in dashboard.iter().chain(&rules) {
        assert!(!metric_names(expr).is_empty(), "queries no metric: {expr}");
    }
}

/// The binary as `run`, with a webhook that never answers (so the alert outbox is in use),
/// one order provisioned, then `/metrics` must offer every name the dashboard and rules use.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_rules_only_query_metrics_a_running_service_exports() {
    let mut exprs = dashboard_exprs();
    exprs.extend(rules_exprs());

    let world = World::start(1, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert(
        "SECURITY_ALERT_WEBHOOK".into(),
        format!("http://127.0.0.1:{}/alerts", free_port()),
    );
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    world.publish_all();
    let mut api = StatusApi::new(port);

    // Series appear as their events happen (the order's steps, the first scrape's request
    // count, the 5 s gauges): scrape until nothing is missing, or the deadline.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = api.get("/metrics", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let exported = exported_names(&answer.body);
        let unknown = unknown_names(&exprs, &exported);
        if unknown.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queried but not exported:\n{}\n\n/metrics:\n{}\n{}",
            unknown
                .iter()
                .map(|(e, n)| format!("  {n}  in  {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
            answer.body,
            provisioner.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gauges the binary refreshes itself (every 5 s): the subscriber is up and held here,
    // the audit chain checked out, and the webhook that never answers holds at least the
    // start's `audit_head` alert in the outbox.
    loop {
        let answer = api.get("/metrics", &[]).await;
        let samples = test_support::prometheus::parse(&answer.body).unwrap();
        let value = |name: &str| test_support::prometheus::total(&samples, name, &[]);
        if value("provisioner_subscriber_connected") == 1.0
            && value("provisioner_subscriber_leader") == 1.0
            && value("provisioner_audit_chain_intact") == 1.0
            && value("provisioner_alerts_waiting") >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        provisioner.terminate().await,
        Some(0),
        "{}",
        provisioner.tail()
    );
}

// ---------------------------------------------------------------------------------------------
// The systemd unit

/// `key=value` lines of an INI-like file, comments and blank lines skipped, each key with its
/// values in order (systemd allows a key several times).
fn ini(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        map.entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    map
}

/// `provisioner config check` with exactly `env`: each variable it lists, with the origin of
/// its value (`env`, `file`, `default`), and the problems it names.
async fn config_check(env: &BTreeMap<String, String>) -> (BTreeMap<String, String>, String) {
    let (_, out) = crate::support::provisioner(&["config", "check"], env).await;
    let mut listed = BTreeMap::new();
    let mut problems = String::new();
    for line in out.lines() {
        if let Some(problem) = line.strip_prefix("provisioner: ") {
            problems.push_str(problem);
            problems.push('\n');
        } else if let Some((name, rest)) = line.split_once('=')
            && let Some((_, origin)) = rest.rsplit_once("  # ")
        {
            listed.insert(name.to_owned(), origin.to_owned());
        }
    }
    (listed, problems)
}

/// Every variable the configuration reads, and those of them that are secrets: the ones the
/// binary reads from the file `<NAME>_FILE` names (asked by setting each `<NAME>_FILE`).
async fn variables_and_secrets() -> (BTreeSet<String>, BTreeSet<String>) {
    let (listed, _) = config_check(&BTreeMap::new()).await;
    assert!(listed.contains_key("PROVISIONER_HTTP_ADDR"), "{listed:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    std::fs::write(&file, "a-value-from-a-file\n").unwrap();
    let env = listed
        .keys()
        .map(|n| (format!("{n}_FILE"), file.display().to_string()))
        .collect();
    let (from_files, _) = config_check(&env).await;
    let secrets: BTreeSet<String> = from_files
        .into_iter()
        .filter(|(_, origin)| origin == "file")
        .map(|(n, _)| n)
        .collect();
    assert!(secrets.contains("FIELD_ENCRYPTION_KEY"), "{secrets:?}");
    (listed.into_keys().collect(), secrets)
}

/// `Environment=` assignments of the unit: `NAME=value` pairs (one or more per line, values
/// optionally double-quoted).
fn environment(unit: &BTreeMap<String, Vec<String>>) -> Vec<(String, String)> {
    unit.get("Environment")
        .into_iter()
        .flatten()
        .flat_map(|line| line.split_whitespace())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("NAME=value");
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

/// A systemd time span (`45s`, `2min`, `1min 30s`, a bare number of seconds).
fn seconds(span: &str) -> u64 {
    let mut total = 0;
    for part in span.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().expect("a number");
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "m" | "min" => n * 60,
            "h" => n * 3600,
            unit => panic!("unit {unit}"),
        };
    }
    total
}

#[tokio::test]
async fn unit_is_hardened_and_takes_secrets_only_as_credentials() {
    let unit = ini(&read_deploy("provisioner.service"));
    let one = |key: &str| -> &str {
        let values = unit.get(key).unwrap_or_else(|| panic!("{key}= missing"));
        values.last().unwrap()
    };
    assert!(
        one("DynamicUser") == "yes" || unit.get("User").is_some_and(|u| u[0] == "provisioner"),
        "a dedicated user"
    );
    for (key, want) in [
        ("ExecStart", "/usr/local/bin/provisioner run"),
        ("EnvironmentFile", "/etc/provisioner/provisioner.env"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "provisioner"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    assert!(
        unit["SystemCallFilter"]
            .iter()
            .any(|f| f == "@system-service"),
        "SystemCallFilter=@system-service"
    );
    // Longer than the service's own bound from SIGTERM to exit (README, Graceful shutdown).
    let stop = seconds(one("TimeoutStopSec"));
    assert!(
        stop > SHUTDOWN_BOUND.as_secs(),
        "TimeoutStopSec={stop}s must exceed {SHUTDOWN_BOUND:?}"
    );

    let (variables, secrets) = variables_and_secrets().await;
    let credentials: BTreeSet<&str> = unit
        .get("LoadCredential")
        .into_iter()
        .flatten()
        .map(|c| c.split_once(':').expect("LoadCredential=ID:PATH").0)
        .collect();
    let env = environment(&unit);
    assert!(!env.is_empty(), "no Environment= lines");
    for (name, value) in &env {
        assert!(!secrets.contains(name), "secret {name} set in the unit");
        let Some(base) = name.strip_suffix("_FILE") else {
            continue;
        };
        assert!(
            secrets.contains(base) || variables.contains(name),
            "{name} is not a variable the configuration reads"
        );
        let credential = value
            .strip_prefix("%d/")
            .unwrap_or_else(|| panic!("{name}={value} is not in the credentials directory %d/"));
        assert!(
            credentials.contains(credential),
            "{name}: no LoadCredential={credential}:..."
        );
    }
    // Every required secret arrives this way.
    for required in [
        "SF_PRIVATE_KEY",
        "WHMCS_API_IDENTIFIER",
        "WHMCS_API_SECRET",
        "FIELD_ENCRYPTION_KEY",
        "PORTAL_API_TOKEN",
    ] {
        let file = format!("{required}_FILE");
        assert!(env.iter().any(|(n, _)| *n == file), "{file} not set");
    }

    // The environment file's example: known settings, none of them a secret, each one valid.
    let example: BTreeMap<String, String> = ini(&read_deploy("provisioner.env.example"))
        .into_iter()
        .map(|(k, mut v)| (k, v.pop().unwrap()))
        .collect();
    assert!(!example.is_empty());
    for name in example.keys() {
        let base = name.strip_suffix("_FILE").unwrap_or(name);
        assert!(
            !secrets.contains(base),
            "secret {name} in provisioner.env.example"
        );
        assert!(
            variables.contains(name) || name == "RUST_LOG",
            "{name} is not a variable the configuration reads"
        );
    }
    let (listed, problems) = config_check(&example).await;
    for name in example.keys().filter(|n| *n != "RUST_LOG") {
        assert_eq!(listed[name], "env", "{name}");
        assert!(
            !problems.contains(&format!("{name}:")),
            "{name} in provisioner.env.example:\n{problems}"
        );
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("note: systemd-analyze is not installed; `verify` of the unit skipped");
        return;
    };
    assert!(version.status.success());
    // `verify` checks that ExecStart's binary exists: point it at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = read_deploy("provisioner.service").replace(
        "ExecStart=/usr/local/bin/provisioner ",
        &format!("ExecStart={BIN} "),
    );
    let path = dir.path().join("provisioner.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify:\n{text}");
    assert!(
        !text.contains("provisioner.service"),
        "systemd-analyze verify warns:\n{text}"
    );
}
