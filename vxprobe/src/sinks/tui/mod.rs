//! `top`: a live terminal view of the hops, the worst flows and the latest anomalies.
//!
//! The UI knows nothing about eBPF: the pipeline sends [`AppEvent`]s (owned data, see
//! [`model`]) over a tokio channel to [`run`], which owns the terminal. State and its changes
//! live in [`App`] ([`App::handle_event`]); drawing is `impl Widget for &App` in [`render`],
//! which reads the state and nothing else, so every screen can be tested on ratatui's
//! `TestBackend` by feeding events.

pub mod app;
pub mod demo;
pub mod feed;
pub mod filter;
pub mod model;
pub mod render;
pub mod terminal;

#[cfg(test)]
mod tests;

pub use app::App;
pub use demo::demo_events;
pub use model::{
    AnomalySample, AppEvent, EventKind, FlowHop, FlowSample, HopCounts, HopId, HopSample, Offload,
};
pub use render::render_once;
pub use terminal::run;
