//! What deploy/ holds, checked with the real tools (no root needed): the alert rules under
//! `promtool test rules`, the manifests under kubernetes-validate, the dashboard's queries and
//! the README's metrics table against the metrics the agent exports.

mod common;

use std::process::Command;

use common::agent::*;
use serde_json::Value;
use vxprobe::sinks::metrics::{FAMILIES, Kind};

/// (d) `promtool test rules` passes on the rules' unit tests, and the rules name only metrics
/// the agent exports or the rules record.
#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let dir = repo_root().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "rules.yaml"],
        vec!["test", "rules", "rules.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("running promtool (cargo xtask setup installs Debian's prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = yaml_documents(&dir.join("rules.yaml"));
    let mut recorded = Vec::new();
    let mut exprs = Vec::new();
    let mut alerts = Vec::new();
    for group in rules[0]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if let Some(name) = rule["record"].as_str() {
                recorded.push(name.to_owned());
            }
            if let Some(name) = rule["alert"].as_str() {
                alerts.push(name.to_owned());
            }
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    for wanted in [
        "VxprobeHopLoss",
        "VxprobeChecksumErrors",
        "VxprobeOversizeDrops",
        "VxprobeEventsLost",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "no alert {wanted}");
    }
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported(&name) || recorded.contains(&name),
                "rules.yaml names {name}, which the agent does not export: {expr}"
            );
        }
    }
}

/// The manifests validate against Kubernetes' schemas (strict: no unknown field) of an older
/// and the newest release kubernetes-validate knows; the PodMonitor, which has no schema
/// there, is checked against the DaemonSet it scrapes; the Service and probes agree too.
#[test]
fn the_manifests_validate_and_agree() {
    let validate = k8s_venv().join("bin/kubernetes-validate");
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new(&validate)
        .args(["--strict", "-k", "1.29.0", "-k", "1.37.0"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo xtask setup installs it)",
                validate.display()
            )
        });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
        for version in ["1.29", "1.37"] {
            assert!(
                report.lines().any(|l| l.starts_with("INFO")
                    && l.contains(&format!(
                        "resource {kind}/vxprobe against version {version}"
                    ))),
                "{kind} not validated against {version}: {report}"
            );
        }
    }
    for line in report.lines().filter(|l| l.starts_with("WARN")) {
        assert!(line.contains("PodMonitor"), "{line}");
    }

    let ds = resource("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let container = &pod["containers"][0];
    let port = &container["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(port["containerPort"], PORT);
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &format!("--listen=0.0.0.0:{PORT}")),
        "the agent listens on the port the DaemonSet declares"
    );
    assert_eq!(pod["hostNetwork"], true);
    // Pods are named from the runtime's socket or the node's layout: host pids, the socket's
    // directory and kubelet's pod logs, read-only; no --cri-socket (probed: another runtime
    // falls back to the layout instead of failing).
    assert_eq!(pod["hostPID"], true);
    for path in ["/run/containerd", "/var/log/pods"] {
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == path && m["readOnly"] == true),
            "{path} mounted read-only"
        );
    }
    assert!(
        !container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.starts_with("--cri-socket"))),
        "the socket is probed"
    );
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for cap in security["capabilities"]["add"].as_array().unwrap() {
        assert!(
            ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"].contains(&cap.as_str().unwrap()),
            "capability {cap} is not one the agent needs"
        );
    }
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&ds["spec"]["selector"]["matchLabels"]));
    let service = resource("Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert!(selects(&service["spec"]["selector"]));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let monitor = resource("PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"]));
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    let account = resource("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    for r in [&ds, &service, &monitor, &account] {
        assert_eq!(
            r["metadata"]["namespace"],
            resource("Namespace")["metadata"]["name"]
        );
    }
}

/// The dashboard is valid JSON, has the panels the issue asks for, and its queries name only
/// metrics the agent exports.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path = repo_root().join("deploy/grafana/vxprobe.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap_or("").to_lowercase())
        .collect();
    for wanted in ["loss per hop", "worst hops", "anomalies by kind"] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel '{wanted}': {titles:?}"
        );
    }
    // The panels' queries, and the query variables' (label_values(...)).
    let mut exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target with a PromQL expr")
                .to_owned()
        })
        .collect();
    assert!(exprs.len() >= panels.len(), "{exprs:?}");
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = &variable["query"];
            exprs.push(
                query["query"]
                    .as_str()
                    .or(query.as_str())
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a query without a metric: {expr}");
        for name in names {
            assert!(
                exported(&name),
                "the dashboard queries {name}, which the agent does not export: {expr}"
            );
        }
    }
}

/// Whether the agent exports samples of this name.
fn exported(name: &str) -> bool {
    FAMILIES.iter().any(|f| {
        f.name == name || (f.kind == Kind::Counter && name == f.name.trim_end_matches("_total"))
    })
}

/// The metric names a PromQL expression (or a Grafana variable query such as
/// `label_values(vxprobe_hop_packets_total, iface)`) selects: identifiers outside label
/// matchers, ranges and strings that are not functions, keywords or grouping labels.
fn metric_names(expr: &str) -> Vec<String> {
    // Grafana's label_values(SELECTOR, LABEL): only the selector names a metric.
    if let Some(args) = expr.trim().strip_prefix("label_values(")
        && let Some((selector, _label)) = args.rsplit_once(',')
    {
        return metric_names(selector);
    }
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        // Aggregation operators, which may be followed by `by (...)` before their `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let (mut i, mut depth_brace, mut depth_bracket) = (0, 0usize, 0usize);
    // Grouping labels follow `by (`/`without (`/`on (`/`ignoring (`.../`group_left (`.
    let mut in_grouping = false;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' => depth_brace += 1,
            '}' => depth_brace = depth_brace.saturating_sub(1),
            '[' => depth_bracket += 1,
            ']' => depth_bracket = depth_bracket.saturating_sub(1),
            '(' => {
                in_grouping = [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&last_word.as_str());
            }
            ')' => in_grouping = false,
            '$' => {
                // A Grafana variable ($__rate_interval, ${iface}).
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = chars.get(j) == Some(&'(');
                let is_label_name =
                    matches!(chars.get(j), Some('=' | '!' | '~')) && depth_brace > 0;
                if depth_brace == 0
                    && depth_bracket == 0
                    && !in_grouping
                    && !is_call
                    && !is_label_name
                    && !KEYWORDS.contains(&word.to_lowercase().as_str())
                    && !(start > 0 && chars[start - 1].is_ascii_digit())
                {
                    names.push(word.clone());
                }
                last_word = word.to_lowercase();
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (iface, direction) (rate(vxprobe_hop_drops_total{iface=~"cali.*"}[5m])) / on (iface) group_left vxprobe_hop_packets_total"#
        ),
        ["vxprobe_hop_drops_total", "vxprobe_hop_packets_total"]
    );
    assert_eq!(
        metric_names(
            r#"topk(10, sum without (reason) (increase(vxprobe_hop_drops_total[$__range])))"#
        ),
        ["vxprobe_hop_drops_total"]
    );
    assert_eq!(
        metric_names(r#"label_values(vxprobe_node_info{node=~"a.*"}, node)"#),
        ["vxprobe_node_info"]
    );
}

/// The README's metrics table names every family the agent exports.
#[test]
fn the_readme_lists_every_metric() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Deploying on a cluster")
        .nth(1)
        .expect("a 'Deploying on a cluster' section");
    for family in FAMILIES {
        assert!(
            section.contains(&format!("`{}`", family.name)),
            "README's metrics table lacks {}",
            family.name
        );
    }
}
