//! iperf3 between the lab's pods: a server in pod 2, clients from pod 1, every run bounded.

use std::{
    io::Read as _,
    net::Ipv4Addr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use vxprobe::lab::Lab;

pub const PORT: u16 = 5201;

/// An iperf3 server in a pod; killed when dropped.
pub struct Server {
    child: Child,
}

impl Server {
    pub fn start(netns: &str) -> anyhow::Result<Self> {
        let mut child = Lab::command(netns, "iperf3")
            .args(["-s", "-p", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        vxprobe::lab::faults::wait_tcp_listening(netns, PORT, &mut child, Duration::from_secs(10))
            .context("iperf3 -s")?;
        Ok(Self { child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to send.
#[derive(Copy, Clone, Debug)]
pub enum Load {
    /// TCP, as fast as it goes.
    Tcp,
    /// UDP datagrams of this many payload bytes, unlimited rate (`-b 0`).
    Udp { len: u16 },
}

/// The outcome of one client run.
#[derive(Copy, Clone, Debug)]
pub struct Run {
    /// TCP: bits per second received. UDP: datagrams per second received.
    pub rate: f64,
    /// UDP: share of the datagrams sent that did not arrive.
    pub lost_share: f64,
}

/// Runs a client from `netns` to `server` for `seconds` (after one omitted warm-up second).
pub fn client(netns: &str, server: Ipv4Addr, load: Load, seconds: u32) -> anyhow::Result<Run> {
    let mut last_error = String::new();
    // A busy machine may leave the server's previous test winding down: retry a refused start.
    for _ in 0..3 {
        let mut cmd = Lab::command(netns, "iperf3");
        cmd.args(["-c", &server.to_string(), "-p", &PORT.to_string()])
            .args(["-t", &seconds.to_string(), "-O", "1", "-J"]);
        if let Load::Udp { len } = load {
            cmd.args(["-u", "-b", "0", "-l", &len.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -c")?;
        let mut stdout = child.stdout.take().context("iperf3 stdout")?;
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            out
        });
        let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 20);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = reader.join().unwrap_or_default();
        let json: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        if status.success() {
            return parse(&json, load);
        }
        last_error = json["error"].as_str().unwrap_or("no output").to_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("iperf3 client failed: {last_error}")
}

fn parse(json: &Value, load: Load) -> anyhow::Result<Run> {
    let received = &json["end"]["sum_received"];
    let seconds = received["seconds"]
        .as_f64()
        .context("no end.sum_received.seconds")?;
    match load {
        Load::Tcp => Ok(Run {
            rate: received["bits_per_second"]
                .as_f64()
                .context("no bits_per_second")?,
            lost_share: 0.0,
        }),
        Load::Udp { .. } => {
            let packets = received["packets"].as_f64().context("no packets")?;
            let lost = received["lost_packets"]
                .as_f64()
                .context("no lost_packets")?;
            Ok(Run {
                rate: (packets - lost).max(0.0) / seconds,
                lost_share: if packets > 0.0 { lost / packets } else { 0.0 },
            })
        }
    }
}
