//! `cargo xtask image` and what the agent's tests need: podman/buildah, Prometheus (promtool),
//! kubernetes-validate in a private venv, the musl target for a static build.
//!
//! The image is FROM scratch with one static binary: nothing is pulled from a registry.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::setup::{self, BuildEnv, run};

/// Debian packages behind the agent's tests and the image: podman and buildah build and run
/// it, prometheus brings the server the tests scrape with and promtool, python3-venv the
/// private venv for kubernetes-validate, curl to look at /metrics by hand.
const AGENT_PACKAGES: &[&str] = &["podman", "buildah", "prometheus", "python3-venv", "curl"];

/// kubernetes-validate from PyPI, pinned; the tests find the venv by this name too
/// (vxprobe/tests/agent.rs, `K8S_VALIDATE_VENV`).
const K8S_VALIDATE: &str = "kubernetes-validate==1.37.0";
pub const K8S_VALIDATE_VENV: &str = "k8s-validate-1.37.0";

/// The image's name; tagged with the workspace version and `latest`.
pub const IMAGE: &str = "localhost/vxprobe";

/// Installs what the agent's tests and the image need (root only; idempotent).
pub fn ensure_agent_tools() -> anyhow::Result<()> {
    if !setup::is_root() {
        eprintln!("xtask: not root: skipping podman, prometheus and kubernetes-validate");
        return Ok(());
    }
    setup::ensure_packages(AGENT_PACKAGES)?;
    ensure_k8s_validate()
}

/// A venv of Debian's python3 with kubernetes-validate (Debian has no package of it).
fn ensure_k8s_validate() -> anyhow::Result<()> {
    let venv = setup::cache_dir().join(K8S_VALIDATE_VENV);
    let bin = venv.join("bin/kubernetes-validate");
    if bin.is_file() {
        return Ok(());
    }
    eprintln!("xtask: installing {K8S_VALIDATE} into {}", venv.display());
    // Debian's own python: a pyenv or another interpreter on PATH may lack venv/ensurepip.
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        K8S_VALIDATE,
    ]))?;
    if !bin.is_file() {
        bail!("{K8S_VALIDATE} installed no {}", bin.display());
    }
    Ok(())
}

/// The Rust target of a static build for this machine's architecture.
fn musl_target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

fn ensure_musl_target(target: &str) -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {target} target (a static vxprobe for the image)");
    run(Command::new("rustup").args(["target", "add", target]))
}

/// Builds the static binary and the image; returns the tags.
pub fn build(env: &BuildEnv, root: &Path) -> anyhow::Result<Vec<String>> {
    if !setup::is_root() {
        bail!("building the image runs podman as root here: run as root");
    }
    setup::ensure_packages(&["podman", "buildah"])?;
    let target = musl_target();
    ensure_musl_target(&target)?;
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--package",
            "vxprobe",
            "--target",
            &target,
        ])
        .env("PATH", &env.path)
        .current_dir(root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build --target {target} failed ({status})");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target_dir.join(&target).join("release/vxprobe");
    check_static(&binary)?;

    // The build context: the Containerfile and the binary, nothing else.
    let context = target_dir.join("image");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)?;
    fs::copy(
        root.join("deploy/image/Containerfile"),
        context.join("Containerfile"),
    )
    .context("copying deploy/image/Containerfile")?;
    fs::copy(&binary, context.join("vxprobe"))
        .with_context(|| format!("copying {}", binary.display()))?;

    let version = env!("CARGO_PKG_VERSION");
    let tags = vec![format!("{IMAGE}:{version}"), format!("{IMAGE}:latest")];
    let mut cmd = Command::new("podman");
    cmd.args(["build", "--pull=never", "--format", "oci"]);
    for tag in &tags {
        cmd.args(["--tag", tag]);
    }
    cmd.args([
        "--label",
        &format!("org.opencontainers.image.version={version}"),
        "--label",
        "org.opencontainers.image.title=vxprobe",
        "--label",
        "org.opencontainers.image.description=eBPF datapath observer for Kubernetes nodes (vxprobe agent)",
    ])
    .arg(&context);
    run(&mut cmd)?;
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &tags[0]])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(size) = size {
        eprintln!(
            "xtask: built {} ({:.1} MiB)",
            tags.join(", "),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(tags)
}

/// A FROM scratch image has no loader or libc: the binary must not ask for one (`.interp`).
fn check_static(binary: &Path) -> anyhow::Result<()> {
    use object::{Object as _, ObjectSection as _};
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let file = object::File::parse(&*bytes)
        .with_context(|| format!("{} is not an object file", binary.display()))?;
    if let Some(interp) = file.section_by_name(".interp") {
        bail!(
            "{} asks for a dynamic loader ({}): a FROM scratch image cannot run it",
            binary.display(),
            String::from_utf8_lossy(interp.data()?).trim_end_matches('\0')
        );
    }
    Ok(())
}

/// Whether `cargo xtask test ARGS` runs the test of the image (vxprobe/tests/image.rs): no
/// `--test` filter, or `--test image`.
pub fn tests_need_image(args: &[String]) -> bool {
    let mut tests = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            break;
        }
        if arg == "--test" {
            tests.extend(it.next().cloned());
        } else if let Some(name) = arg.strip_prefix("--test=") {
            tests.push(name.to_owned());
        }
    }
    tests.is_empty() || tests.iter().any(|t| t == "image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runs_with_the_image_test_build_the_image() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(tests_need_image(&args(&[])));
        assert!(tests_need_image(&args(&["--test", "image"])));
        assert!(tests_need_image(&args(&["--test", "hops", "--test=image"])));
        assert!(tests_need_image(&args(&["--", "--ignored"])));
        assert!(!tests_need_image(&args(&["--test", "hops"])));
        assert!(!tests_need_image(&args(&["--test", "agent"])));
        assert!(!tests_need_image(&args(&[
            "--test", "usage", "--", "--test", "image"
        ])));
    }
}
