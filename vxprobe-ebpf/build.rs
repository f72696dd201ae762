use which::which;

/// The kernel programs are linked by `bpf-linker`, a dependency cargo cannot see: rebuild them
/// when the linker on PATH changes (for example after `cargo xtask build` rebuilt it against a
/// new nightly's libLLVM).
fn main() {
    // aya-build passes the host's architecture as `bpf_target_arch` (pt_regs differ by arch).
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
    // Headers sit at any alignment in a packet (the IP header at 14): where the kernel lets BPF
    // load misaligned packet data (CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS: x86-64 and arm64),
    // let LLVM load a field in one instruction instead of assembling it from single bytes.
    // Elsewhere the verifier would refuse such loads: keep the byte loads.
    let arch = std::env::var("CARGO_CFG_BPF_TARGET_ARCH").unwrap_or_default();
    if arch == "x86_64" || arch == "aarch64" {
        println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    }
    println!("cargo:rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask build`"),
    }
}
