//! The hook each signal uses, asserted where the answer is known: `cargo xtask vm-test` boots
//! Debian's kernels and sets VXPROBE_EXPECT_HOOKS to its kernel matrix's row for the kernel,
//! e.g. `tc=clsact,drop=tp_btf:kfree_skb,retransmit=tp_btf:tcp_retransmit_skb`. A value with a
//! `:` must equal the hook `vxprobe probes --json` names; a bare hook type (`fentry`) matches
//! any target of that type. Every signal the report names needs a value, so a new signal (or a
//! new rung) gets its row in the matrix. Without the variable (this machine's own kernel)
//! there is nothing to compare with, and the test says so.

mod common;

use std::collections::BTreeMap;

use common::is_root;

fn matches(want: &str, got: &str) -> bool {
    if want.contains(':') {
        got == want
    } else {
        got.split(':').next() == Some(want)
    }
}

#[test]
fn each_signal_uses_the_hook_the_kernel_matrix_expects() {
    let Ok(expected) = std::env::var("VXPROBE_EXPECT_HOOKS") else {
        eprintln!(
            "skipped: VXPROBE_EXPECT_HOOKS is not set (cargo xtask vm-test sets it inside the \
             kernels of its matrix)"
        );
        return;
    };
    if !is_root() {
        return;
    }
    let report = common::run::probes_json();

    let mut actual = BTreeMap::new();
    actual.insert(
        "tc".to_owned(),
        report["tc_attach"].as_str().unwrap().to_owned(),
    );
    for signal in report["signals"].as_array().unwrap() {
        actual.insert(
            signal["signal"].as_str().unwrap().to_owned(),
            signal["hook"].as_str().unwrap_or("UNAVAILABLE").to_owned(),
        );
    }
    let expected: BTreeMap<&str, &str> = expected
        .split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .expect("VXPROBE_EXPECT_HOOKS: key=value,...")
        })
        .collect();
    let row: Vec<String> = actual.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("kernel {}: {}", report["kernel"], row.join(","));

    let mut wrong = Vec::new();
    for (signal, want) in &expected {
        match actual.get(*signal) {
            Some(got) if matches(want, got) => {}
            Some(got) => wrong.push(format!("{signal}: expected {want}, uses {got}")),
            None => wrong.push(format!("{signal}: expected {want}, not in the report")),
        }
    }
    for (signal, got) in &actual {
        if !expected.contains_key(signal.as_str()) {
            wrong.push(format!(
                "{signal}: uses {got}, the matrix has no value for it (xtask/src/vm.rs)"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "kernel {}: {wrong:#?}\nreport: {report:#}",
        report["kernel"]
    );
}

#[test]
fn a_bare_hook_type_matches_any_target_of_that_type() {
    assert!(matches("tp_btf", "tp_btf:kfree_skb"));
    assert!(matches("tp_btf:kfree_skb", "tp_btf:kfree_skb"));
    assert!(!matches("fentry", "tp_btf:kfree_skb"));
    assert!(!matches("tp_btf:kfree_skb", "tp_btf:tcp_retransmit_skb"));
    assert!(!matches("tcx", "UNAVAILABLE"));
}
