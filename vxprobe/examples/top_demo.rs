//! The `top` UI on the demo scenario, no kernel needed: `cargo run --example top_demo`.
//! One interval a second, as the recording pipeline would send them; `q` quits.

use std::time::{Duration, SystemTime};

use vxprobe::sinks::tui::{AppEvent, demo};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        // The status line, as the pipeline sends it once attached.
        let status = demo::demo_events().into_iter().take(1);
        for event in status {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        for i in 0.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for mut event in demo::demo_interval(i) {
                if let AppEvent::Anomaly(sample) = &mut event {
                    sample.ts = SystemTime::now();
                }
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    });
    vxprobe::sinks::tui::run(rx).await
}
