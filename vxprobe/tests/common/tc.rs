//! Other tools' TC filters on the lab's devices, added with tc(8) as those tools add them.

use super::must;

/// Adds a clsact qdisc to `dev` in `netns`.
pub fn add_clsact(netns: &str, dev: &str) {
    must(netns, "tc", &["qdisc", "add", "dev", dev, "clsact"]);
}

/// `tc filter add dev DEV DIR prio PRIO SPEC…` in `netns`.
pub fn add_filter(netns: &str, dev: &str, dir: &str, prio: &str, spec: &[&str]) {
    let mut args = vec!["filter", "add", "dev", dev, dir, "prio", prio];
    args.extend_from_slice(spec);
    must(netns, "tc", &args);
}
