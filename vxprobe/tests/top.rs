//! `vxprobe top` end to end, in tmux over the lab with loss injected at one hop: the screen
//! shows that hop losing and the affected flow; `q` exits 0 with the terminal restored.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{VXPROBE, is_root};
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, UNDERLAY_DEV, VXLAN_DEV, faults};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("running tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn top_shows_the_lossy_hop_and_flow_and_quits_cleanly() {
    if !is_root() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let [n1, n2] = &lab.nodes;
    faults::random_loss(&n1.netns, POD_HOST_DEV, 4).unwrap();
    let session = format!("vxprobe-top-{}", std::process::id());
    let exit_file = std::env::temp_dir().join(format!("{session}.exit"));
    let _ = std::fs::remove_file(&exit_file);
    let command = format!(
        "ip netns exec {} {VXPROBE} top --interval 500ms -i 'cali*' -i {VXLAN_DEV} -i {UNDERLAY_DEV}; echo $? > {}; echo vxprobe-top-ended; sleep 60",
        n1.netns,
        exit_file.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "45",
        &command,
    ]);
    let mut ping = vxprobe::lab::Lab::command(&n1.pod.netns, "ping")
        // Until the screen shows it (killed below): a debug vxprobe under QEMU/TCG takes
        // many seconds to attach.
        .args(["-q", "-i", "0.01", "-w", "90", &n2.pod.ip.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Wait until the screen shows the loss at cali0 and the pods' flow.
    let deadline = Instant::now() + Duration::from_secs(60) * common::time_scale();
    let mut screen = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        screen = tmux(&["capture-pane", "-p", "-t", &session]);
        if screen.contains(POD_HOST_DEV)
            && screen.contains(&n2.pod.ip.to_string())
            && screen.contains('%')
        {
            let lossy_row = screen
                .lines()
                .find(|l| l.contains(POD_HOST_DEV) && l.contains("ingress"))
                .unwrap_or_default();
            if lossy_row.contains('▶') {
                break;
            }
        }
    }
    std::fs::write(std::env::temp_dir().join("vxprobe-top-screen.txt"), &screen).unwrap();
    let _ = ping.kill();
    let _ = ping.wait();
    let lossy_row = screen
        .lines()
        .find(|l| l.contains(POD_HOST_DEV) && l.contains("ingress"))
        .unwrap_or_else(|| panic!("no cali0 ingress row:\n{screen}"));
    assert!(
        lossy_row.contains('▶'),
        "cali0 ingress is marked as the hop losing most:\n{screen}"
    );
    assert!(
        screen.contains(&n2.pod.ip.to_string()),
        "the affected flow is listed:\n{screen}"
    );

    tmux(&["send-keys", "-t", &session, "q"]);
    // The shell writes the status after creating the file: wait for the status itself.
    let deadline = Instant::now() + Duration::from_secs(10) * common::time_scale();
    let mut code = String::new();
    while code.trim().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        code = std::fs::read_to_string(&exit_file).unwrap_or_default();
    }
    let restored = tmux(&["capture-pane", "-p", "-t", &session]);
    let _ = tmux(&["kill-session", "-t", &session]);
    let _ = std::fs::remove_file(&exit_file);
    assert_eq!(code.trim(), "0", "top exits 0 on q:\n{restored}");
    // The alternate screen is gone: the UI's frame is no longer on the terminal, the shell's
    // own output is.
    assert!(
        restored.contains("vxprobe-top-ended"),
        "terminal restored:\n{restored}"
    );
    assert!(!restored.contains('▶'), "terminal restored:\n{restored}");
}
