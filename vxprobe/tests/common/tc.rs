//! Other tools' TC filters on the lab's devices, added with tc(8) as those tools add them.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use super::must;

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;

/// bpf(2) for a command that returns a new descriptor.
pub fn bpf(cmd: libc::c_long, attr: &[u8; 128]) -> std::io::Result<OwnedFd> {
    // SAFETY: bpf(2) with an attr buffer that outlives the call; the pointers written into it
    // by the callers point to live buffers of the sizes stated next to them.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd returned by bpf(2), owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Another tool's classifier, `r0 = verdict; exit`, named `name` (at most 15 bytes), for TCX
/// ingress (`tcx`) or for a clsact filter.
pub fn load_verdict(name: &str, verdict: i32, tcx: bool) -> std::io::Result<OwnedFd> {
    let imm = verdict.to_le_bytes();
    let insns: [u8; 16] = [
        0xb7, 0x00, 0x00, 0x00, imm[0], imm[1], imm[2], imm[3], // mov64 r0, verdict
        0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // exit
    ];
    load(name, &insns, tcx)
}

/// A classifier that gives every packet the same skb hash (`bpf_set_hash`) and passes it on:
/// what a device or a program upstream may do, and the worst case for anything that tells
/// flows apart by their hash.
pub fn load_hash_setter(name: &str, hash: u32) -> std::io::Result<OwnedFd> {
    const BPF_FUNC_SET_HASH: u8 = 48;
    let imm = hash.to_le_bytes();
    let insns: [u8; 32] = [
        0xb7,
        0x02,
        0x00,
        0x00,
        imm[0],
        imm[1],
        imm[2],
        imm[3], // mov64 r2, hash (r1: the skb)
        0x85,
        0x00,
        0x00,
        0x00,
        BPF_FUNC_SET_HASH,
        0x00,
        0x00,
        0x00, // call bpf_set_hash
        0xb7,
        0x00,
        0x00,
        0x00,
        0xff,
        0xff,
        0xff,
        0xff, // mov64 r0, TC_ACT_UNSPEC
        0x95,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00, // exit
    ];
    load(name, &insns, false)
}

/// BPF_PROG_LOAD of a classifier from its instructions (8 bytes each).
fn load(name: &str, insns: &[u8], tcx: bool) -> std::io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32 / 8).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    if tcx {
        attr[68..72].copy_from_slice(&BPF_TCX_INGRESS.to_ne_bytes());
    }
    bpf(BPF_PROG_LOAD, &attr)
}

/// A classifier pinned in a bpffs of its own, for `tc ... bpf object-pinned PATH da`; the pin
/// and the mount go when this value does.
pub struct PinnedProgram {
    dir: std::path::PathBuf,
    pin: std::path::PathBuf,
}

impl PinnedProgram {
    pub fn pin(name: &str, prog: &OwnedFd) -> Self {
        let dir = std::env::temp_dir().join(format!("vxp-pin-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a bpffs");
        let pin = dir.join(name);
        let path = std::ffi::CString::new(pin.to_str().unwrap()).unwrap();
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        // BPF_OBJ_PIN returns 0, not an fd: wrap nothing.
        // SAFETY: bpf(2) with a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
        assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
        Self { dir, pin }
    }

    pub fn path(&self) -> &str {
        self.pin.to_str().unwrap()
    }
}

impl Drop for PinnedProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pin);
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A TCX link of `program` at the ingress of `ifindex` (looked up in the calling thread's
/// namespace), appended to the chain; detached when the descriptor closes.
pub fn tcx_link(program: &OwnedFd, ifindex: u32) -> std::io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TCX_INGRESS.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &attr)
}

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
