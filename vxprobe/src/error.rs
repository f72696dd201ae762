//! Errors that decide vxprobe's exit status.

use std::fmt;

/// Bad usage or input (unknown interface, bad duration...): exit status 2, one line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A clap error as one line: its message with the missing argument, tip or possible values
/// that clap puts on the lines below, without the usage and help text after them.
pub fn usage_line(e: &clap::Error) -> String {
    use crate::cli::Cli;
    use clap::{CommandFactory as _, error::ErrorKind};
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
    ) {
        let commands: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .filter(|name| name != "help")
            .collect();
        return format!(
            "a command is needed: {} (vxprobe --help describes them)",
            commands.join(", ")
        );
    }
    let rendered = e.render().to_string();
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.trim_start_matches("error: "));
        }
    }
    if parts.is_empty() {
        "bad usage (vxprobe --help)".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Exit statuses of the contract.
pub mod exit {
    pub const OK: i32 = 0;
    pub const RUNTIME: i32 = 1;
    pub const USAGE: i32 = 2;
}
