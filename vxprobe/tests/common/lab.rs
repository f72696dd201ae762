//! The lab a root test runs in.

use vxprobe::lab::{Lab, LabOptions};

/// The default lab, built for a test that needs root; without root, `None` (and `is_root`
/// has said why the test does nothing).
pub fn root_lab() -> Option<Lab> {
    root_lab_with(LabOptions::default())
}

/// [`root_lab`] built with `options`.
pub fn root_lab_with(options: LabOptions) -> Option<Lab> {
    super::is_root().then(|| Lab::build(&options).expect("building the lab"))
}
