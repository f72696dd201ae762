//! Reading kernel structs (sk_buff, net_device, task_struct) through field offsets that user
//! space resolved from the running kernel's BTF. Every read is a bpf_probe_read_kernel, so a
//! bad pointer yields `None`, never a fault.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use vxprobe_common::{KernelOffsets, PacketInfo, SNAP_LEN, SockFlow};

/// Filled in by user space at load time (`EbpfLoader::set_global`); read-only for programs.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a static; volatile so the compiler cannot fold the zeros above
    // into the code (the loader rewrites the value before the program is verified).
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()).ok() }
}

/// Reads `dst.len()` bytes at `base + offset` straight into `dst`; zeros when the read fails
/// (the helper clears `dst` then). Byte arrays go here, not through [`read`]: a copy from the
/// stack may come out as word loads at odd stack offsets, which the verifier refuses once
/// misaligned loads are allowed (vxprobe-ebpf's build.rs).
#[inline(always)]
pub fn read_bytes(base: *const u8, offset: u32, dst: &mut [u8]) {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one (a null
    // `base` included); it writes at most `dst.len()` bytes.
    let _ = unsafe { bpf_probe_read_kernel_buf(base.wrapping_add(offset as usize), dst) };
}

/// Sixteen zero bytes in two stores. LLVM turns runs of zero stores of 16 bytes or more into
/// a memset call, a byte loop on the BPF target (bpf-linker links compiler_builtins' one); a
/// zero it cannot see through keeps them stores.
#[inline(always)]
pub fn zero16(dst: &mut [u8; 16]) {
    let zero = core::hint::black_box(0u64);
    let words = dst.as_mut_ptr().cast::<u64>();
    // SAFETY: both words lie inside `dst`; written without assuming alignment.
    unsafe {
        words.write_unaligned(zero);
        words.add(1).write_unaligned(zero);
    }
}

/// Namespace inode of a `struct net *`.
#[inline(always)]
pub fn net_inum(net: *const u8, o: &KernelOffsets) -> u32 {
    read::<u32>(net, o.net_ns_inum).unwrap_or(0)
}

/// Namespace inode of the current task (the receiving process, in syscall context).
#[inline(always)]
pub fn task_netns(o: &KernelOffsets) -> u32 {
    // SAFETY: bpf_get_current_task has no preconditions; the pointer is only used through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let nsproxy = read::<*const u8>(task, o.task_nsproxy).unwrap_or(core::ptr::null());
    let net = read::<*const u8>(nsproxy, o.nsproxy_net_ns).unwrap_or(core::ptr::null());
    net_inum(net, o)
}

/// Fills `info` from an sk_buff and returns the namespace inode of its device (0: none).
#[inline(always)]
pub fn fill_packet_info(skb: *const u8, info: &mut PacketInfo, o: &KernelOffsets) -> u32 {
    info.skb_len = read::<u32>(skb, o.skb_len).unwrap_or(0);
    info.iif = read::<i32>(skb, o.skb_iif).unwrap_or(0) as u32;
    info.protocol = read::<u16>(skb, o.skb_protocol).unwrap_or(0);
    info.task_netns = task_netns(o);
    let dev = read::<*const u8>(skb, o.skb_dev).unwrap_or(core::ptr::null());
    let mut netns = 0;
    info.ifindex = 0;
    // Zeros without a device: the read of a null base fails, and the helper clears on failure.
    read_bytes(dev, o.dev_name, &mut info.ifname);
    if !dev.is_null() {
        info.ifindex = read::<i32>(dev, o.dev_ifindex).unwrap_or(0) as u32;
        let net = read::<*const u8>(dev, o.dev_nd_net).unwrap_or(core::ptr::null());
        netns = net_inum(net, o);
    }

    // The packet from its network header; offsets are u16 from skb->head, ~0 when unset.
    info.cap_len = 0;
    let head = read::<*const u8>(skb, o.skb_head).unwrap_or(core::ptr::null());
    let network = read::<u16>(skb, o.skb_network_header).unwrap_or(u16::MAX);
    let tail = read::<u32>(skb, o.skb_tail).unwrap_or(0);
    if !head.is_null() && network != u16::MAX && tail > u32::from(network) {
        let start = head.wrapping_add(usize::from(network));
        // SAFETY: bpf_probe_read_kernel checks the source range and fails cleanly.
        if unsafe { bpf_probe_read_kernel_buf(start, &mut info.packet) }.is_ok() {
            let available = tail - u32::from(network);
            info.cap_len = if available < SNAP_LEN as u32 {
                available
            } else {
                SNAP_LEN as u32
            };
        }
    }
    netns
}

const AF_INET: u16 = vxprobe_common::AF_INET as u16;
const AF_INET6: u16 = vxprobe_common::AF_INET6 as u16;

/// The addresses and ports of a `struct sock`, and its namespace inode.
#[inline(always)]
pub fn read_sock(sk: *const u8, flow: &mut SockFlow, o: &KernelOffsets) -> u32 {
    flow.family = read::<u16>(sk, o.sk_family).unwrap_or(0);
    flow.sport = read::<u16>(sk, o.sk_num).unwrap_or(0);
    flow.dport = u16::from_be(read::<u16>(sk, o.sk_dport).unwrap_or(0));
    flow._pad = 0;
    zero16(&mut flow.saddr);
    zero16(&mut flow.daddr);
    if flow.family == AF_INET {
        read_bytes(sk, o.sk_rcv_saddr, &mut flow.saddr[..4]);
        read_bytes(sk, o.sk_daddr, &mut flow.daddr[..4]);
    } else if flow.family == AF_INET6 {
        read_bytes(sk, o.sk_v6_rcv_saddr, &mut flow.saddr);
        read_bytes(sk, o.sk_v6_daddr, &mut flow.daddr);
    }
    let net = read::<*const u8>(sk, o.sk_net).unwrap_or(core::ptr::null());
    net_inum(net, o)
}
