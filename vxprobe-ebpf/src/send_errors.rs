//! Sends refused with EMSGSIZE ("Message too long"), seen where every kernel has a hook: the
//! sendto/sendmsg syscall tracepoints. Where the kernel hands programs the current task's
//! saved registers (`bpf_task_pt_regs`, 5.15+), the exit hook alone does it all: a send that
//! succeeds costs one compare, and a refused one's arguments are read from the registers the
//! call was made with. Before that, the enter hook remembers the call's arguments per thread
//! (a map update on every send of the node) and the exit hook takes them back. Either way the
//! destination address is read at the exit (the caller's memory is still there while it waits
//! in the syscall).

use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use vxprobe_common::{EventKind, SendCall, SendErrorEvent};

use crate::{events, kernel};

const EMSGSIZE: i64 = 90;
const AF_INET: u16 = vxprobe_common::AF_INET as u16;
const AF_PACKET: u16 = vxprobe_common::AF_PACKET as u16;
const AF_INET6: u16 = vxprobe_common::AF_INET6 as u16;

/// Syscall tracepoint records: 8 bytes of common fields, the syscall number, then each
/// argument (or the return value) in an 8-byte slot. This layout is the same on every kernel.
const ARG0: usize = 16;
const ARG_SLOT: usize = 8;

#[derive(Copy, Clone)]
#[repr(C)]
struct PendingSend {
    call: u32,
    fd: u32,
    /// sendto: the buffer length; sendmsg: 0 (summed from the iovecs at exit).
    len: u64,
    /// sendto: the sockaddr; sendmsg: the msghdr.
    user_ptr: u64,
}

/// In-flight send calls by pid_tgid. LRU: a thread killed inside the call cannot leak its slot.
#[map]
static PENDING_SENDS: LruHashMap<u64, PendingSend> = LruHashMap::with_max_entries(16384, 0);

fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: reads within the tracepoint record, whose layout is fixed for syscalls.
    unsafe { ctx.read_at::<u64>(ARG0 + n * ARG_SLOT) }.unwrap_or(0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn vxprobe_sendto_enter(ctx: TracePointContext) -> u32 {
    remember(&ctx, SendCall::Sendto, arg(&ctx, 2), arg(&ctx, 4));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn vxprobe_sendmsg_enter(ctx: TracePointContext) -> u32 {
    remember(&ctx, SendCall::Sendmsg, 0, arg(&ctx, 1));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn vxprobe_sendto_exit(ctx: TracePointContext) -> u32 {
    finish(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn vxprobe_sendmsg_exit(ctx: TracePointContext) -> u32 {
    finish(&ctx);
    0
}

#[inline(always)]
fn remember(ctx: &TracePointContext, call: SendCall, len: u64, user_ptr: u64) {
    let pending = PendingSend {
        call: call as u32,
        fd: arg(ctx, 0) as u32,
        len,
        user_ptr,
    };
    let _ = PENDING_SENDS.insert(&aya_ebpf::helpers::bpf_get_current_pid_tgid(), &pending, 0);
}

/// `sendto` refused, its arguments from the registers it was called with (no enter hook).
#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn vxprobe_sendto_exit_regs(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 0) as i64 == -EMSGSIZE {
        // sendto(fd, buf, len, flags, dest_addr, addrlen)
        if let Some(regs) = syscall_regs() {
            report(
                aya_ebpf::helpers::bpf_get_current_pid_tgid(),
                &PendingSend {
                    call: SendCall::Sendto as u32,
                    fd: syscall_arg(regs, 0) as u32,
                    len: syscall_arg(regs, 2),
                    user_ptr: syscall_arg(regs, 4),
                },
            );
        }
    }
    0
}

/// `sendmsg` refused, as above.
#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn vxprobe_sendmsg_exit_regs(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 0) as i64 == -EMSGSIZE {
        // sendmsg(fd, msg, flags)
        if let Some(regs) = syscall_regs() {
            report(
                aya_ebpf::helpers::bpf_get_current_pid_tgid(),
                &PendingSend {
                    call: SendCall::Sendmsg as u32,
                    fd: syscall_arg(regs, 0) as u32,
                    len: 0,
                    user_ptr: syscall_arg(regs, 1),
                },
            );
        }
    }
    0
}

/// The registers the current task entered the kernel with (5.15+; a program that calls this
/// is refused before, and the ladder takes the enter/exit pair).
#[inline(always)]
fn syscall_regs() -> Option<*const u8> {
    // SAFETY: helpers without preconditions; the task pointer goes straight to the other.
    let regs = unsafe {
        aya_ebpf::helpers::generated::bpf_task_pt_regs(
            aya_ebpf::helpers::generated::bpf_get_current_task_btf(),
        )
    } as *const u8;
    (!regs.is_null()).then_some(regs)
}

/// Argument `n` (0-based) of the system call, as its saved registers hold it at the exit.
#[inline(always)]
fn syscall_arg(regs: *const u8, n: usize) -> u64 {
    use core::mem::offset_of;
    #[cfg(bpf_target_arch = "x86_64")]
    let offset = {
        use aya_ebpf::bindings::pt_regs;
        [
            offset_of!(pt_regs, rdi),
            offset_of!(pt_regs, rsi),
            offset_of!(pt_regs, rdx),
            offset_of!(pt_regs, r10),
            offset_of!(pt_regs, r8),
        ]
    };
    // The first argument's register holds the return value by now: its value at entry is
    // kept apart (`orig_x0`).
    #[cfg(bpf_target_arch = "aarch64")]
    let offset = {
        use aya_ebpf::bindings::{pt_regs, user_pt_regs};
        let x = |i: usize| offset_of!(pt_regs, user_regs) + offset_of!(user_pt_regs, regs) + 8 * i;
        [offset_of!(pt_regs, orig_x0), x(1), x(2), x(3), x(4)]
    };
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    let offset: [usize; 5] = {
        // User space does not offer this rung on other architectures.
        let _ = regs;
        return 0;
    };
    if n >= offset.len() {
        return 0;
    }
    kernel::read::<u64>(regs, offset[n] as u32).unwrap_or(0)
}

#[inline(always)]
fn finish(ctx: &TracePointContext) {
    let key = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed below.
    let Some(pending) = (unsafe { PENDING_SENDS.get(&key) }).copied() else {
        return;
    };
    let _ = PENDING_SENDS.remove(&key);
    let ret = arg(ctx, 0) as i64;
    if ret != -EMSGSIZE {
        return;
    }
    report(key, &pending);
}

/// A refused send of the current task (`key`: its pid_tgid) into the ring buffer.
#[inline(always)]
fn report(key: u64, pending: &PendingSend) {
    let Some(mut entry) = events::reserve::<SendErrorEvent>(EventKind::SendError) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record; every field
    // is written before submit. User memory is only read through bpf_probe_read_user.
    unsafe {
        (*event).header.netns = kernel::task_netns(&kernel::offsets());
        (*event).tgid = (key >> 32) as u32;
        (*event).pid = key as u32;
        events::current_comm(&mut (*event).comm);
        (*event).errno = EMSGSIZE as u32;
        (*event).call = pending.call;
        (*event).fd = pending.fd;
        clear_destination(event);
        let mut len = pending.len;
        let mut sockaddr = pending.user_ptr as *const u8;
        if pending.call == SendCall::Sendmsg as u32 && !sockaddr.is_null() {
            // struct msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen; ... }
            let msg = sockaddr;
            sockaddr = bpf_probe_read_user(msg.cast::<*const u8>()).unwrap_or(core::ptr::null());
            let iov =
                bpf_probe_read_user(msg.add(16).cast::<*const u64>()).unwrap_or(core::ptr::null());
            let iovlen = bpf_probe_read_user(msg.add(24).cast::<u64>()).unwrap_or(0);
            len = 0;
            // struct iovec { void *iov_base; size_t iov_len; }: the first four pieces.
            for i in 0..4u64 {
                if i >= iovlen || iov.is_null() {
                    break;
                }
                len += bpf_probe_read_user(iov.add((i * 2 + 1) as usize)).unwrap_or(0);
            }
        }
        (*event).len = len as u32;
        if sockaddr.is_null() {
            // No destination given: the socket's binding names the device (AF_PACKET).
            (*event).addr_ifindex = bound_packet_ifindex(pending.fd);
        } else {
            read_destination(Memory::User, sockaddr, event);
        }
    }
    events::submit(entry);
}

/// The ifindex an AF_PACKET socket is bound to, from the current task's fd table:
/// task->files->fdt->fd[fd]->private_data (struct socket)->sk. 0 when any step fails or the
/// socket is not AF_PACKET.
#[inline(always)]
fn bound_packet_ifindex(fd: u32) -> u32 {
    let o = kernel::offsets();
    if o.packet_ifindex == 0 {
        return 0;
    }
    // SAFETY: bpf_get_current_task has no preconditions; the pointer is only dereferenced
    // through bpf_probe_read_kernel.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let null = core::ptr::null();
    let files = kernel::read::<*const u8>(task, o.task_files).unwrap_or(null);
    let fdt = kernel::read::<*const u8>(files, o.files_fdt).unwrap_or(null);
    let max_fds = kernel::read::<u32>(fdt, o.fdt_max_fds).unwrap_or(0);
    if fd >= max_fds {
        return 0;
    }
    let table = kernel::read::<*const u8>(fdt, o.fdt_fd).unwrap_or(null);
    let file = kernel::read::<*const u8>(table, fd.wrapping_mul(8)).unwrap_or(null);
    let socket = kernel::read::<*const u8>(file, o.file_private_data).unwrap_or(null);
    let sk = kernel::read::<*const u8>(socket, o.socket_sk).unwrap_or(null);
    if kernel::read::<u16>(sk, o.sk_family) != Some(AF_PACKET) {
        return 0;
    }
    kernel::read::<i32>(sk, o.packet_ifindex).unwrap_or(0) as u32
}

/// The better rung where fexit exists: the kernel functions that refuse the send, with the
/// socket in hand (no per-call state, and the device straight from the packet socket).
#[aya_ebpf::macros::fexit(function = "packet_sendmsg")]
pub fn vxprobe_packet_sendmsg_fexit(ctx: aya_ebpf::programs::FExitContext) -> i32 {
    // int packet_sendmsg(struct socket *sock, struct msghdr *msg, size_t len)
    let ret: i64 = ctx.arg(3);
    if ret as i32 == -(EMSGSIZE as i32) {
        let o = kernel::offsets();
        let sock: *const u8 = ctx.arg(0);
        let sk = kernel::read::<*const u8>(sock, o.socket_sk).unwrap_or(core::ptr::null());
        report_kernel_send(SendCall::PacketSendmsg, sk, ctx.arg(1), ctx.arg(2));
    }
    0
}

#[aya_ebpf::macros::fexit(function = "udp_sendmsg")]
pub fn vxprobe_udp_sendmsg_fexit(ctx: aya_ebpf::programs::FExitContext) -> i32 {
    // int udp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)
    let ret: i64 = ctx.arg(3);
    if ret as i32 == -(EMSGSIZE as i32) {
        report_kernel_send(SendCall::UdpSendmsg, ctx.arg(0), ctx.arg(1), ctx.arg(2));
    }
    0
}

#[inline(always)]
fn report_kernel_send(call: SendCall, sk: *const u8, msg: *const u8, len: u64) {
    let o = kernel::offsets();
    let Some(mut entry) = events::reserve::<SendErrorEvent>(EventKind::SendError) else {
        return;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record; every field
    // is written before submit. Kernel memory is only read through bpf_probe_read_kernel.
    unsafe {
        (*event).header.netns = kernel::task_netns(&o);
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).pid = pid_tgid as u32;
        events::current_comm(&mut (*event).comm);
        (*event).errno = EMSGSIZE as u32;
        (*event).call = call as u32;
        (*event).fd = 0;
        (*event).len = len as u32;
        clear_destination(event);
        // msghdr.msg_name (offset 0) is a kernel copy of the destination, if one was given.
        let name = kernel::read::<*const u8>(msg, 0).unwrap_or(core::ptr::null());
        let family = read_destination(Memory::Kernel, name, event);
        if family == 0 && call == SendCall::PacketSendmsg && o.packet_ifindex != 0 {
            // No destination given: the packet socket's binding names the device.
            (*event).addr_ifindex = kernel::read::<i32>(sk, o.packet_ifindex).unwrap_or(0) as u32;
        }
    }
    events::submit(entry);
}

/// Where a destination sockaddr is read from: the caller's memory (the syscall hooks) or the
/// kernel's copy of it (fexit on the functions that refuse the send).
#[derive(Copy, Clone)]
enum Memory {
    User,
    Kernel,
}

impl Memory {
    #[inline(always)]
    fn read<T>(self, base: *const u8, offset: usize) -> Option<T> {
        match self {
            // SAFETY: the helper checks the user address and fails cleanly on a bad one.
            Memory::User => unsafe { bpf_probe_read_user(base.wrapping_add(offset).cast()) }.ok(),
            Memory::Kernel => kernel::read(base, offset as u32),
        }
    }

    /// Straight into the event (kernel.rs' `read_bytes` says why); zeros on failure.
    #[inline(always)]
    fn read_bytes(self, base: *const u8, offset: usize, dst: &mut [u8]) {
        match self {
            Memory::User => {
                // SAFETY: as in `read`; the helper writes at most `dst.len()` bytes.
                let _ = unsafe { bpf_probe_read_user_buf(base.wrapping_add(offset), dst) };
            }
            Memory::Kernel => kernel::read_bytes(base, offset as u32, dst),
        }
    }
}

/// # Safety
/// `event` points to a reserved ring-buffer record.
#[inline(always)]
unsafe fn clear_destination(event: *mut SendErrorEvent) {
    // SAFETY: the caller's.
    unsafe {
        (*event).addr_family = 0;
        (*event).addr_port = 0;
        (*event).addr_ifindex = 0;
        kernel::zero16(&mut (*event).addr);
    }
}

/// Decodes the sockaddr at `name` (null: none) into a cleared event's destination; returns
/// its family (0 when there is none or it cannot be read).
///
/// # Safety
/// `event` points to a reserved ring-buffer record.
#[inline(always)]
unsafe fn read_destination(memory: Memory, name: *const u8, event: *mut SendErrorEvent) -> u16 {
    if name.is_null() {
        return 0;
    }
    let family = memory.read::<u16>(name, 0).unwrap_or(0);
    // SAFETY: the caller's.
    let event = unsafe { &mut *event };
    event.addr_family = family;
    match family {
        // struct sockaddr_ll { u16 family; be16 protocol; int ifindex; ... }
        AF_PACKET => event.addr_ifindex = memory.read::<i32>(name, 4).unwrap_or(0) as u32,
        // struct sockaddr_in { u16 family; be16 port; be32 addr; ... }
        AF_INET => {
            event.addr_port = u16::from_be(memory.read::<u16>(name, 2).unwrap_or(0));
            memory.read_bytes(name, 4, &mut event.addr[..4]);
        }
        // struct sockaddr_in6 { u16 family; be16 port; be32 flowinfo; u8 addr[16]; ... }
        AF_INET6 => {
            event.addr_port = u16::from_be(memory.read::<u16>(name, 2).unwrap_or(0));
            memory.read_bytes(name, 8, &mut event.addr);
        }
        _ => {}
    }
    family
}
