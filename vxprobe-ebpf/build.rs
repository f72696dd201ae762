use which::which;

/// The kernel programs are linked by `bpf-linker`, a dependency cargo cannot see: rebuild them
/// when the linker on PATH changes (for example after `cargo xtask build` rebuilt it against a
/// new nightly's libLLVM).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask build`"),
    }
}
