//! Every input the fuzzers ever crashed on (`fuzz/regressions/TARGET/`) and the seeds they
//! start from (`fuzz/seeds/TARGET/`), replayed through the same code as the fuzz targets
//! (`vxprobe::fuzz`): a crash found once stays fixed. No root needed.

use std::path::Path;

#[test]
fn saved_fuzz_inputs_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (name, target) in vxprobe::fuzz::TARGETS {
        for kind in ["regressions", "seeds"] {
            let dir = root.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                {
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} panics", path.display());
                replayed += 1;
            }
        }
    }
    eprintln!("{replayed} saved fuzz inputs replayed");
    // Each target has at least one seed.
    for (name, _) in vxprobe::fuzz::TARGETS {
        let seeds = root.join("seeds").join(name);
        let count = std::fs::read_dir(&seeds)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        assert!(count > 0, "no seed in {}", seeds.display());
    }
}

/// Arbitrary inputs of every length up to 600 bytes, derived from a fixed generator: a quick
/// stand-in for the fuzzers in the normal test run.
#[test]
fn pseudo_random_inputs_run_clean() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, target) in vxprobe::fuzz::TARGETS {
        for len in 0..600 {
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {data:?} panics");
        }
    }
}
