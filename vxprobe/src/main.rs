use std::process::ExitCode;

use clap::Parser as _;
use vxprobe::{
    cli::{Cli, Command},
    cmd::{agent, demo, doctor, probes as probes_cmd, record, report, top},
    error::{UsageError, exit},
};

fn main() -> ExitCode {
    vxprobe::memory::return_large_blocks();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print them whole, succeed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // The contract: one line naming the problem.
            eprintln!("vxprobe: {}", vxprobe::cli::usage_line(&e));
            return code(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vxprobe: cannot start the async runtime: {e}");
            return code(exit::RUNTIME);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Record(args) => record::run(args).await,
            Command::Top(args) => top::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Probes(args) => probes_cmd::run(args),
            Command::Doctor(args) => doctor::run(args).await,
            Command::Report(args) => report::run(args),
            Command::Agent(args) => agent::run(args).await,
        }
    });
    match result {
        Ok(()) => code(exit::OK),
        // The contract: Ctrl-C and SIGTERM end with 0, every attachment removed.
        Err(e)
            if e.downcast_ref::<vxprobe::interrupt::Interrupted>()
                .is_some() =>
        {
            eprintln!("vxprobe: {e}");
            code(exit::OK)
        }
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("vxprobe: {e}");
            code(exit::USAGE)
        }
        Err(e) => {
            eprintln!("vxprobe: {}", shorten(&format!("{e:#}")));
            code(exit::RUNTIME)
        }
    }
}

fn code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// A verifier rejection carries the whole verifier log: keep the first line and the end (where
/// the verifier says why), unless VXPROBE_VERBOSE asks for everything.
fn shorten(message: &str) -> String {
    const KEEP: usize = 12;
    let lines: Vec<&str> = message.lines().collect();
    if lines.len() <= KEEP * 2 || std::env::var_os("VXPROBE_VERBOSE").is_some() {
        return message.to_owned();
    }
    format!(
        "{}\n  [... {} lines of verifier log; VXPROBE_VERBOSE=1 shows them ...]\n{}",
        lines[0],
        lines.len() - 1 - KEEP,
        lines[lines.len() - KEEP..].join("\n")
    )
}
