//! apt for the kernels of the matrix. Bookworm's kernels come through the machine's own apt;
//! other suites (bullseye, for Debian 11's Linux 5.10) through a private apt state under
//! `~/.cache/vxprobe/apt-<suite>/`: its own sources list (the suite on the Debian mirror the
//! machine already uses, signed by debian-archive-keyring), package lists and cache, passed as
//! `-o Dir::...` options. The machine's own apt sources and lists are never touched.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::setup;

/// The keyring every Debian suite is signed with (package debian-archive-keyring).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// How to run apt for one suite.
pub struct Apt {
    /// `-o` options (empty: the machine's own apt).
    options: Vec<String>,
    /// The private state's directory, if any.
    dir: Option<PathBuf>,
}

impl Apt {
    /// The machine's apt for `None`, a private state for another suite.
    pub fn for_suite(suite: Option<&str>) -> anyhow::Result<Self> {
        let Some(suite) = suite else {
            return Ok(Self {
                options: Vec::new(),
                dir: None,
            });
        };
        let dir = setup::cache_dir().join(format!("apt-{suite}"));
        for sub in ["lists/partial", "cache/archives/partial", "parts"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("sources.list");
        let line = format!("deb [signed-by={KEYRING}] {} {suite} main\n", mirror());
        if fs::read_to_string(&sources).ok().as_deref() != Some(line.as_str()) {
            fs::write(&sources, line)?;
        }
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let options = [
            ("Dir::Etc::sourcelist", path(sources)),
            ("Dir::Etc::sourceparts", "-".to_owned()),
            ("Dir::Etc::preferencesparts", path(dir.join("parts"))),
            ("Dir::State::Lists", path(dir.join("lists"))),
            ("Dir::Cache", path(dir.join("cache"))),
            // root's private directories are not readable by the _apt sandbox user
            ("APT::Sandbox::User", "root".to_owned()),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["-o".to_owned(), format!("{key}={value}")])
        .collect();
        Ok(Self {
            options,
            dir: Some(dir),
        })
    }

    /// `apt-get` or `apt-cache` with this state's options.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    /// `apt-get update` of this state's lists (only them, for a private state).
    pub fn update(&self) -> anyhow::Result<()> {
        if self.dir.is_some() && !setup::is_root() {
            anyhow::bail!("a private apt state needs root to update");
        }
        setup::run(
            self.command("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }
}

/// The Debian mirror the machine's apt already uses (its first `debian` source that is not
/// the security archive), else deb.debian.org.
fn mirror() -> String {
    let mut texts: Vec<String> = fs::read_to_string("/etc/apt/sources.list")
        .into_iter()
        .collect();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let name = file.to_string_lossy();
            if name.ends_with(".list") || name.ends_with(".sources") {
                texts.extend(fs::read_to_string(&file).ok());
            }
        }
    }
    texts
        .iter()
        .flat_map(|text| text.lines())
        .find_map(mirror_of)
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// The Debian archive URL of a `deb URL suite ...` or deb822 `URIs: URL` line.
fn mirror_of(line: &str) -> Option<String> {
    let line = line.trim();
    let uri = if let Some(rest) = line.strip_prefix("URIs:") {
        rest.split_whitespace().next()?
    } else if let Some(rest) = line.strip_prefix("deb ") {
        // `deb [options] URL suite components`
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        rest.split_whitespace().next()?
    } else {
        return None;
    };
    let uri = uri.trim_end_matches('/');
    (uri.ends_with("/debian") && uri.starts_with("http")).then(|| uri.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_read_from_either_format() {
        assert_eq!(
            mirror_of("URIs: http://deb.debian.org/debian").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_of("deb [signed-by=/x.gpg] http://mirror.example/debian/ bookworm main")
                .as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_of("URIs: http://deb.debian.org/debian-security"),
            None
        );
        assert_eq!(mirror_of("# deb http://x/debian bookworm main"), None);
    }
}
