use which::which;

/// The kernel programs are linked by `bpf-linker`, a dependency cargo cannot see: rebuild them
/// when the linker on PATH changes (for example after `cargo xtask build` rebuilt it against a
/// new nightly's libLLVM).
fn main() {
    // aya-build passes the host's architecture as `bpf_target_arch` (pt_regs differ by arch).
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask build`"),
    }
}
