//! Traffic the benchmarks make inside the lab, from threads that entered a lab namespace
//! (`lab::faults::in_netns`): refused sends into the tap at a chosen rate (the anomaly
//! generator), UDP from many source ports (live flows), and a sink that reads it.

use std::{
    io,
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use vxprobe::lab::faults::{FrameWriter, RawSender, in_netns, set_int_option};

/// Keeps a loop at `rate` per second: after each batch, sleeps until the batch is due.
struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    fn wait(&self, done: u64) {
        let Some(rate) = self.rate else { return };
        let due = self.start + Duration::from_secs_f64(done as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// What a generator did.
#[derive(Copy, Clone, Debug, Default)]
pub struct Generated {
    pub attempts: u64,
    /// Sends refused with EMSGSIZE: each is one `oversize` event for vxprobe.
    pub refused: u64,
    pub elapsed: Duration,
}

/// Refused sends, as `lab::faults::packet_sends` makes them (a [`FrameWriter`] frame larger
/// than the tap's MTU allows, sent to an address naming the tap), but paced at `rate` per second
/// (`None`: as fast as one thread goes) for `duration`.
pub fn refused_sends(
    netns: &str,
    dev: &str,
    size: usize,
    rate: Option<f64>,
    duration: Duration,
) -> io::Result<Generated> {
    let dev = dev.to_owned();
    in_netns(netns, move || {
        let writer = FrameWriter::open(&dev)?;
        let frame = FrameWriter::frame(size);
        let pacer = Pacer {
            start: Instant::now(),
            rate,
        };
        let mut out = Generated::default();
        while pacer.start.elapsed() < duration {
            for _ in 0..64 {
                out.attempts += 1;
                if let Err(e) = writer.send(&frame, false)
                    && e.raw_os_error() == Some(libc::EMSGSIZE)
                {
                    out.refused += 1;
                }
            }
            pacer.wait(out.attempts);
        }
        out.elapsed = pacer.start.elapsed();
        Ok(out)
    })
}

/// The UDP ports flow `k` of [`flows`] uses: 50,000 source ports per destination port.
pub fn flow_ports(k: u32) -> (u16, u16) {
    (
        (1024 + k % 50_000) as u16,
        (FLOW_PORT_BASE + k / 50_000) as u16,
    )
}

pub const FLOW_PORT_BASE: u32 = 9000;

/// A background traffic thread, stopped and joined by [`Background::stop`].
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<u64>>>,
    /// Datagrams sent or received so far.
    pub count: Arc<AtomicU64>,
}

impl Background {
    /// Stops the thread and returns its final count.
    pub fn stop(mut self) -> io::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("traffic thread panicked")),
            None => Ok(0),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn background(
    netns: &str,
    work: impl FnOnce(Arc<AtomicBool>, Arc<AtomicU64>) -> io::Result<u64> + Send + 'static,
) -> Background {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s, c, ns) = (stop.clone(), count.clone(), netns.to_owned());
    let handle = std::thread::spawn(move || in_netns(&ns, move || work(s, c)));
    Background {
        stop,
        handle: Some(handle),
        count,
    }
}

/// `n` live UDP flows from a raw socket in `netns` to `dst`: flow `k` goes from source port
/// and to destination port [`flow_ports`]`(k)`, each flow one datagram per `period`, until
/// stopped (or `limit` has passed). The UDP checksum is 0 ("none"), valid over IPv4.
pub fn flows(netns: &str, dst: Ipv4Addr, n: u32, period: Duration, limit: Duration) -> Background {
    background(netns, move |stop, count| {
        let sender = RawSender::open(libc::IPPROTO_UDP, dst)?;
        let mut datagram = [0u8; 8 + 18];
        let len = datagram.len() as u16;
        datagram[4..6].copy_from_slice(&len.to_be_bytes());
        datagram[8..].copy_from_slice(b"vxprobe-bench-flow");
        let pacer = Pacer {
            start: Instant::now(),
            rate: Some(f64::from(n) / period.as_secs_f64()),
        };
        let mut sent = 0u64;
        'run: loop {
            for k in 0..n {
                let (sport, dport) = flow_ports(k);
                datagram[0..2].copy_from_slice(&sport.to_be_bytes());
                datagram[2..4].copy_from_slice(&dport.to_be_bytes());
                if sender.send(&datagram).is_ok() {
                    sent += 1;
                }
                if sent.is_multiple_of(64) {
                    count.store(sent, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) || pacer.start.elapsed() > limit {
                        break 'run;
                    }
                    pacer.wait(sent);
                }
            }
        }
        count.store(sent, Ordering::Relaxed);
        Ok(sent)
    })
}

/// Reads and discards UDP datagrams on `ports` in `netns`, so the flows end in a socket (no
/// NO_SOCKET drops, no ICMP) and a full receive buffer does not drop them either.
pub fn sink(netns: &str, ports: std::ops::Range<u16>) -> Background {
    background(netns, move |stop, count| {
        let sockets: Vec<UdpSocket> = ports
            .map(|p| {
                let s = UdpSocket::bind(("0.0.0.0", p))?;
                s.set_nonblocking(true)?;
                // SO_RCVBUFFORCE (root) goes past rmem_max, so bursts wait in the buffer
                // instead of being dropped.
                set_int_option(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20)?;
                Ok(s)
            })
            .collect::<io::Result<_>>()?;
        let mut buf = [0u8; 2048];
        let mut received = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            for s in &sockets {
                while s.recv(&mut buf).is_ok() {
                    received += 1;
                    idle = false;
                }
            }
            count.store(received, Ordering::Relaxed);
            if idle {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(received)
    })
}
