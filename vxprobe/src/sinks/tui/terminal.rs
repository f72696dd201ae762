//! The run loop: owns the terminal, merges keyboard input, data messages and signals with
//! `tokio::select!`, and redraws after each batch of messages.
//!
//! The terminal is restored however the loop ends: on quit, on SIGTERM/SIGHUP/SIGINT, on an
//! error (the guard's `Drop`) and on a panic (the hook `ratatui::try_init` installs).

use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::{Event, EventStream, KeyEventKind};
use futures_util::StreamExt as _;
use ratatui::DefaultTerminal;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::{Receiver, error::TryRecvError},
    time::MissedTickBehavior,
};

use super::{app::App, model::AppEvent};

/// Redraw at least this often, even with nothing new (a cheap frame: the state has not moved).
const TICK: Duration = Duration::from_secs(1);
/// Data messages applied before a redraw when they arrive faster than frames can be drawn.
const BATCH: usize = 4096;

/// Puts the terminal back as it was when dropped (raw mode off, main screen).
struct TerminalGuard {
    terminal: DefaultTerminal,
}

impl TerminalGuard {
    fn new() -> anyhow::Result<Self> {
        let terminal = ratatui::try_init().context("setting up the terminal")?;
        Ok(Self { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the UI until the user quits or a terminating signal arrives, fed by `rx`. When the
/// sender goes away the screen stays (marked "feed ended") until the user quits.
pub async fn run(mut rx: Receiver<AppEvent>) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    // In raw mode Ctrl-C is a key, but `kill -INT` still sends the signal.
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut guard = TerminalGuard::new()?;
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut app = App::new();
    let mut feed_open = true;

    loop {
        guard
            .terminal
            .draw(|frame| frame.render_widget(&app, frame.area()))
            .context("drawing the screen")?;
        tokio::select! {
            event = input.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    app.handle_event(AppEvent::Key(key));
                }
                Some(Ok(Event::Resize(..))) => app.handle_event(AppEvent::Resize),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading terminal input"),
                None => break,
            },
            message = rx.recv(), if feed_open => match message {
                Some(message) => {
                    app.handle_event(message);
                    // Apply what else is already queued before paying for a frame.
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(message) => app.handle_event(message),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                feed_open = false;
                                app.handle_event(AppEvent::FeedEnded);
                                break;
                            }
                        }
                    }
                }
                None => {
                    feed_open = false;
                    app.handle_event(AppEvent::FeedEnded);
                }
            },
            _ = tick.tick() => {}
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = sigint.recv() => break,
        }
        if app.should_quit() {
            break;
        }
    }
    drop(guard);
    Ok(())
}
