//! The commands: each builds a session and wires it to its sinks.

pub mod agent;
pub mod demo;
pub mod doctor;
pub mod probes;
pub mod record;
pub mod report;
pub mod top;
