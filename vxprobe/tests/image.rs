//! The agent's image, run by podman exactly as deploy/kubernetes' DaemonSet runs it.

mod common;

use std::{
    io::Read as _,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use common::{agent::*, is_root, programs_of, still_loaded};
use vxprobe::lab::{Lab, LabOptions, http};

/// (c) The image, run by podman exactly as the DaemonSet runs it (capabilities, read-only root,
/// host PID namespace, seccomp, host paths, arguments), in the lab node's namespace standing
/// for the host network: it attaches, answers the kubelet's probes on the node's address,
/// counts what the nft rule dropped, and stops cleanly.
#[test]
fn the_image_runs_under_the_daemonsets_security_context() {
    if !is_root() {
        return;
    }
    let podman_works = Command::new("podman")
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !podman_works {
        eprintln!("skipped: podman does not run here (`podman info` fails)");
        return;
    }
    let ds = resource("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let image = container["image"].as_str().unwrap();
    assert_eq!(
        image,
        format!("localhost/vxprobe:{}", env!("CARGO_PKG_VERSION")),
        "the DaemonSet runs this version's image"
    );
    let exists = Command::new("podman")
        .args(["image", "exists", image])
        .status()
        .unwrap();
    assert!(
        exists.success(),
        "no image {image}: `cargo xtask image` builds it (`cargo xtask test` does first)"
    );
    assert_eq!(pod["hostNetwork"], true);
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false, "never privileged");

    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let n1 = &lab.nodes[0];
    drop_a_third_of_pings(&n1.netns);
    let name = format!("vxprobe-test-{}", std::process::id());
    let mut cmd = Command::new("podman");
    cmd.args(["run", "--rm", "--name", &name])
        .arg(format!("--network=ns:/run/netns/{}", n1.netns))
        // This machine refuses to raise rlimits; podman's defaults would.
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=1000:1000",
        ]);
    if pod["hostPID"] == true {
        cmd.arg("--pid=host");
    }
    let caps = &security["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    cmd.arg("--cap-drop=all");
    for cap in caps["add"].as_array().unwrap() {
        cmd.arg(format!("--cap-add=CAP_{}", cap.as_str().unwrap()));
    }
    if security["readOnlyRootFilesystem"] == true {
        cmd.arg("--read-only");
    }
    if security["allowPrivilegeEscalation"] == false {
        cmd.arg("--security-opt=no-new-privileges");
    }
    match security["seccompProfile"]["type"].as_str() {
        Some("Unconfined") => {
            cmd.arg("--security-opt=seccomp=unconfined");
        }
        Some("RuntimeDefault") | None => {}
        Some(other) => panic!("seccompProfile {other}: teach this test"),
    }
    if let Some(user) = security["runAsUser"].as_u64() {
        cmd.arg(format!("--user={user}"));
    }
    // hostPath volumes at their mount points, as the kubelet would mount them.
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let host = volume["hostPath"]["path"].as_str().unwrap();
        if volume["hostPath"]["type"] == "DirectoryOrCreate" {
            std::fs::create_dir_all(host).unwrap();
        }
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        cmd.arg(format!(
            "--volume={host}:{}{ro}",
            mount["mountPath"].as_str().unwrap()
        ));
    }
    for env in container["env"].as_array().unwrap() {
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    }
    cmd.arg(image);
    // The DaemonSet's arguments ($(NODE_NAME) as the kubelet expands it), then the lab's hops.
    for arg in container["args"].as_array().unwrap() {
        cmd.arg(arg.as_str().unwrap().replace("$(NODE_NAME)", "lab-node-1"));
    }
    cmd.args(["--stats-interval", "200ms"]).args(NODE_HOPS);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running podman");
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    });
    let mut container_guard = Server(child);

    // The kubelet probes a host-network pod on the node's address.
    let port = container["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    let node_addr = SocketAddr::from((n1.underlay_ip, port));
    let probe = |path: &str| http::get(&n1.netns, node_addr, path, None);
    let readiness = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let liveness = container["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    wait_for(
        "the container's readiness probe",
        Duration::from_secs(90),
        || {
            if let Some(status) = container_guard.0.try_wait().unwrap() {
                panic!("the container exited ({status})");
            }
            match probe(readiness) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
                Err(e) => Err(e.to_string()),
            }
        },
    );
    assert_eq!(probe(liveness).unwrap().status, 200);
    let pid: i32 = String::from_utf8(
        Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", &name])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let programs = programs_of(pid);

    pings(&lab);
    let (seen, dropped) = (
        nft_counter(&n1.netns, "seen"),
        nft_counter(&n1.netns, "dropped"),
    );
    assert!(dropped > 30, "the rule dropped {dropped}");
    let metrics = || {
        let r = probe("/metrics").expect("GET /metrics");
        samples(&r.body)
    };
    let m = wait_for(
        "the container's counters to reach the nft rule's",
        Duration::from_secs(10),
        || {
            let m = metrics();
            let drops = sum(&m, "vxprobe_hop_drops_total", &CALI_IN);
            let packets = sum(&m, "vxprobe_hop_packets_total", &CALI_IN);
            (drops == dropped as f64 && packets == seen as f64)
                .then_some(m.clone())
                .ok_or(format!(
                    "drops {drops} (rule {dropped}), packets {packets} (rule saw {seen})"
                ))
        },
    );
    assert_eq!(sum(&m, "vxprobe_hop_drops_total", &[]), dropped as f64);
    assert_eq!(sum(&m, "vxprobe_node_info", &[("node", "lab-node-1")]), 1.0);
    // Every signal attached in the container as it does outside (hook "none" only where this
    // kernel has no hook at all).
    for hook in m.keys().filter(|k| k.starts_with("vxprobe_hook_info")) {
        if hook.contains("hook=\"none\"") {
            assert!(
                hook.contains("rx_csum_fault") || hook.contains("tcp_bad_csum"),
                "{hook}"
            );
        }
    }

    // The kubelet's stop: SIGTERM, then the container's exit status.
    common::run::output_ok(Command::new("podman").args(["kill", "--signal", "TERM", &name]));
    let status = wait_for("the container to exit", Duration::from_secs(30), || {
        container_guard
            .0
            .try_wait()
            .unwrap()
            .ok_or_else(|| "running".to_owned())
    });
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        still_loaded(&programs).is_empty(),
        "programs left after the container stopped"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
