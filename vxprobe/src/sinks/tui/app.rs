//! The UI's state and the one place it changes: [`App::handle_event`]. Rendering (in
//! [`super::render`]) only reads it.
//!
//! Memory is bounded whatever the feed does: the events panel keeps the latest
//! [`MAX_EVENTS`], the loss history [`HISTORY_LEN`] intervals, the flows table [`MAX_FLOWS`]
//! flows (the least troubled are evicted first), and a pause holds at most [`MAX_HELD`]
//! messages.

use std::{
    cmp::Reverse,
    collections::{HashMap, VecDeque},
    time::Duration,
};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    filter::Filter,
    model::{
        AnomalySample, AppEvent, Flow, FlowHop, FlowSample, HopCounts, HopId, HopSample,
        OffloadHint, Outer, PathVerdict, PodId,
    },
};
use crate::observe::judge;

/// Anomalies kept for the events panel.
pub const MAX_EVENTS: usize = 200;
/// Intervals of loss history (10 minutes at the default 1 s interval).
pub const HISTORY_LEN: usize = 600;
/// Flows tracked at once.
pub const MAX_FLOWS: usize = 10_000;
/// Data messages held while paused; past this the oldest are discarded (and counted).
pub const MAX_HELD: usize = 1_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Panel {
    Hops,
    Flows,
    Events,
}

impl Panel {
    fn next(self) -> Self {
        match self {
            Panel::Hops => Panel::Flows,
            Panel::Flows => Panel::Events,
            Panel::Events => Panel::Hops,
        }
    }

    fn prev(self) -> Self {
        self.next().next()
    }
}

/// What the flows table is sorted by (worst first).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SortKey {
    Loss,
    Retransmits,
    CsumErrors,
    Oversize,
    Fragments,
    Bytes,
}

impl SortKey {
    pub const ALL: [SortKey; 6] = [
        SortKey::Loss,
        SortKey::Retransmits,
        SortKey::CsumErrors,
        SortKey::Oversize,
        SortKey::Fragments,
        SortKey::Bytes,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SortKey::Loss => "loss",
            SortKey::Retransmits => "retrans",
            SortKey::CsumErrors => "csum",
            SortKey::Oversize => "oversize",
            SortKey::Fragments => "frag",
            SortKey::Bytes => "bytes",
        }
    }

    fn next(self) -> Self {
        let at = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(at + 1) % Self::ALL.len()]
    }

    /// The primary sort value (higher is worse); loss compares per mille of loss, then drops.
    fn value(self, t: &HopCounts) -> (u64, u64) {
        match self {
            SortKey::Loss => (
                (judge::flow_loss_pct(t.packets, t.drops) * 1000.0) as u64,
                t.drops,
            ),
            SortKey::Retransmits => (t.retransmits, 0),
            SortKey::CsumErrors => (t.csum_errors, 0),
            SortKey::Oversize => (t.oversize, 0),
            SortKey::Fragments => (t.fragments, 0),
            SortKey::Bytes => (t.bytes, 0),
        }
    }
}

/// One flow as tracked since the UI started: totals, and the same per hop.
#[derive(Clone, Debug)]
pub struct FlowEntry {
    pub flow: Flow,
    pub outer: Option<Outer>,
    /// Hops in the order the flow crossed them (first seen first), with totals.
    pub hops: Vec<FlowHop>,
    pub total: HopCounts,
    /// The interval (counted from 1) the flow was last seen in.
    pub last_seen: u64,
}

impl FlowEntry {
    fn new(sample: &FlowSample) -> Self {
        Self {
            flow: sample.flow.clone(),
            outer: sample.outer.clone(),
            hops: Vec::new(),
            total: HopCounts::default(),
            last_seen: 0,
        }
    }

    fn add(&mut self, sample: &FlowSample, interval: u64) {
        self.total.add(&sample.total);
        if sample.outer.is_some() {
            self.outer.clone_from(&sample.outer);
        }
        for hop in &sample.hops {
            match self.hops.iter_mut().find(|h| h.id() == hop.id()) {
                Some(known) => {
                    known.counts.add(&hop.counts);
                    // Named once the pod index knows it (a veth can be seen before its pod).
                    if hop.pod.is_some() {
                        known.pod.clone_from(&hop.pod);
                    }
                }
                None => {
                    self.hops.push(hop.clone());
                    // A hop first seen later takes its place on the path, not the end.
                    self.hops.sort_by_key(|h| (h.path_rank(), h.ifindex));
                }
            }
        }
        self.last_seen = interval;
    }

    /// The pods on the flow's path (at the veths it crossed), in path order, each once.
    pub fn pods(&self) -> Vec<&PodId> {
        let mut pods: Vec<&PodId> = Vec::new();
        for pod in self.hops.iter().filter_map(|h| h.pod.as_ref()) {
            if !pods.contains(&pod) {
                pods.push(pod);
            }
        }
        pods
    }

    /// The share of the flow's packets that died on its path ([`judge::flow_loss_pct`]).
    pub fn loss_pct(&self) -> f64 {
        judge::flow_loss_pct(self.total.packets, self.total.drops)
    }

    /// Eviction order: the least troubled, then the smallest, then the longest quiet go first.
    fn keep_score(&self) -> (u64, u64, u64) {
        (self.total.trouble(), self.total.bytes, self.last_seen)
    }
}

/// Bytes per segment at a hop (see [`HopSample::mean_segment`]).
pub fn mean_segment(hop: &HopSample) -> Option<u32> {
    hop.mean_segment.or_else(|| {
        let per = if hop.segs > 0 { hop.segs } else { hop.packets };
        hop.bytes
            .checked_div(per)
            .map(|m| u32::try_from(m).unwrap_or(u32::MAX))
    })
}

#[derive(Debug)]
pub struct App {
    // Data, as of the last interval applied.
    pub(super) hops: Vec<HopSample>,
    pub(super) worst_hop: Option<HopId>,
    pub(super) offload_hint: Option<OffloadHint>,
    pub(super) flows: HashMap<Flow, FlowEntry>,
    /// The flows table: filtered and sorted keys of `flows`.
    pub(super) flow_view: Vec<Flow>,
    pub(super) events: VecDeque<AnomalySample>,
    /// Drops per interval, summed over every hop, oldest first.
    pub(super) loss_history: VecDeque<u64>,
    pub(super) hooks: Vec<String>,
    pub(super) interval: Option<Duration>,
    pub(super) lost_events: u64,
    /// Flow entries evicted from the kernel's full flow table since start.
    pub(super) evicted_flows: u64,
    pub(super) intervals_seen: u64,
    pub(super) feed_ended: bool,
    pub(super) notice: Option<String>,

    // Interaction.
    pub(super) focus: Panel,
    pub(super) sort: SortKey,
    pub(super) filter: Filter,
    /// The filter as typed, while `/` editing is under way; the filter applies as it is typed.
    pub(super) filter_input: Option<String>,
    /// The filter in force when editing started (Esc restores it).
    filter_before_edit: Filter,
    pub(super) paused: bool,
    held: VecDeque<AppEvent>,
    pub(super) held_discarded: u64,
    pub(super) help: bool,
    /// The flow whose path is shown.
    pub(super) path_view: Option<Flow>,
    pub(super) hop_sel: usize,
    pub(super) flow_sel: usize,
    /// Once the user moves through the flows, the selection sticks to the flow they chose
    /// as the table re-sorts; until then it stays on the top (worst) row.
    followed_flow: Option<Flow>,
    pub(super) event_sel: usize,
    quit: bool,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    pub fn new() -> Self {
        Self {
            hops: Vec::new(),
            worst_hop: None,
            offload_hint: None,
            flows: HashMap::new(),
            flow_view: Vec::new(),
            events: VecDeque::new(),
            loss_history: VecDeque::new(),
            hooks: Vec::new(),
            interval: None,
            lost_events: 0,
            evicted_flows: 0,
            intervals_seen: 0,
            feed_ended: false,
            notice: None,
            focus: Panel::Hops,
            sort: SortKey::Loss,
            filter: Filter::default(),
            filter_input: None,
            filter_before_edit: Filter::default(),
            paused: false,
            held: VecDeque::new(),
            held_discarded: 0,
            help: false,
            path_view: None,
            hop_sel: 0,
            flow_sel: 0,
            followed_flow: None,
            event_sel: 0,
            quit: false,
        }
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Data messages held by the pause, to be applied on resume.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn sort(&self) -> SortKey {
        self.sort
    }

    pub fn focus(&self) -> Panel {
        self.focus
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    pub fn hops(&self) -> &[HopSample] {
        &self.hops
    }

    /// The hops table's rows: the last interval's hops that pass the filter.
    pub fn visible_hops(&self) -> impl Iterator<Item = &HopSample> {
        self.hops
            .iter()
            .filter(|h| self.filter.matches_hop(&h.ifname, h.pod.as_ref()))
    }

    /// The flows table, worst first by the current sort.
    pub fn flow_rows(&self) -> impl ExactSizeIterator<Item = &FlowEntry> {
        self.flow_view.iter().map(|f| &self.flows[f])
    }

    pub fn flow(&self, flow: &Flow) -> Option<&FlowEntry> {
        self.flows.get(flow)
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// The events panel's rows, newest first.
    pub fn visible_events(&self) -> impl Iterator<Item = &AnomalySample> {
        self.events
            .iter()
            .rev()
            .filter(|e| self.filter.matches_event(e))
    }

    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    pub fn loss_history(&self) -> &VecDeque<u64> {
        &self.loss_history
    }

    pub fn selected_flow(&self) -> Option<&FlowEntry> {
        self.flow_view.get(self.flow_sel).map(|f| &self.flows[f])
    }

    pub fn path_flow(&self) -> Option<&Flow> {
        self.path_view.as_ref()
    }

    pub fn handle_event(&mut self, event: AppEvent) {
        match event {
            AppEvent::Key(key) => self.handle_key(key),
            AppEvent::Resize => {}
            AppEvent::Quit => self.quit = true,
            AppEvent::FeedEnded => self.feed_ended = true,
            AppEvent::Notice(notice) => self.notice = notice,
            AppEvent::Evicted(n) => self.evicted_flows = self.evicted_flows.saturating_add(n),
            AppEvent::Status { hooks, interval } => {
                self.hooks = hooks;
                self.interval = Some(interval);
            }
            data @ (AppEvent::Interval { .. } | AppEvent::Anomaly(_)) if self.paused => {
                if self.held.len() == MAX_HELD {
                    self.held.pop_front();
                    self.held_discarded += 1;
                }
                self.held.push_back(data);
            }
            AppEvent::Interval {
                hops,
                flows,
                lost,
                worst,
                hint,
            } => {
                self.worst_hop = worst;
                self.offload_hint = hint;
                self.apply_interval(hops, flows, lost)
            }
            AppEvent::Anomaly(sample) => self.apply_anomaly(sample),
        }
    }

    fn apply_anomaly(&mut self, mut sample: AnomalySample) {
        // Identical events share a row (×N), moved to the top with the newest's details.
        if let Some(at) = self.events.iter().rposition(|e| e.same_event(&sample))
            && let Some(old) = self.events.remove(at)
        {
            sample.count = sample.count.saturating_add(old.count);
        } else if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(sample);
        // Keep the selected event under the cursor as new ones arrive on top.
        if self.event_sel > 0 {
            self.event_sel = (self.event_sel + 1).min(self.events.len().saturating_sub(1));
        }
    }

    fn apply_interval(&mut self, hops: Vec<HopSample>, flows: Vec<FlowSample>, lost: u64) {
        self.intervals_seen += 1;
        self.lost_events = self.lost_events.saturating_add(lost);
        if self.interval.is_none() {
            self.interval = hops.first().map(|h| h.interval);
        }
        if self.loss_history.len() == HISTORY_LEN {
            self.loss_history.pop_front();
        }
        self.loss_history
            .push_back(hops.iter().fold(0, |sum, h| sum.saturating_add(h.drops)));
        self.hops = hops;
        for sample in &flows {
            self.flows
                .entry(sample.flow.clone())
                .or_insert_with(|| FlowEntry::new(sample))
                .add(sample, self.intervals_seen);
        }
        self.evict_flows();
        self.refresh_flow_view();
        self.clamp_selections();
    }

    /// Keeps the [`MAX_FLOWS`] flows worth the most attention.
    fn evict_flows(&mut self) {
        if self.flows.len() <= MAX_FLOWS {
            return;
        }
        let mut scored: Vec<_> = self
            .flows
            .values()
            .map(|e| (e.keep_score(), e.flow.clone()))
            .collect();
        let excess = scored.len() - MAX_FLOWS;
        scored.select_nth_unstable(excess - 1);
        for (_, flow) in scored.into_iter().take(excess) {
            self.flows.remove(&flow);
        }
    }

    /// Re-filters and re-sorts the flows table, keeping a followed flow selected.
    fn refresh_flow_view(&mut self) {
        let sort = self.sort;
        let mut rows: Vec<&FlowEntry> = self
            .flows
            .values()
            .filter(|e| {
                self.filter.matches_flow(
                    &e.flow,
                    e.hops.iter().map(|h| (h.ifname.as_str(), h.pod.as_ref())),
                )
            })
            .collect();
        rows.sort_unstable_by(|a, b| {
            (
                Reverse(sort.value(&a.total)),
                Reverse(a.total.bytes),
                &a.flow,
            )
                .cmp(&(
                    Reverse(sort.value(&b.total)),
                    Reverse(b.total.bytes),
                    &b.flow,
                ))
        });
        self.flow_view = rows.into_iter().map(|e| e.flow.clone()).collect();
        if let Some(followed) = &self.followed_flow
            && let Some(at) = self.flow_view.iter().position(|f| f == followed)
        {
            self.flow_sel = at;
        }
    }

    fn clamp_selections(&mut self) {
        let hops = self.visible_hops().count();
        self.hop_sel = self.hop_sel.min(hops.saturating_sub(1));
        self.flow_sel = self.flow_sel.min(self.flow_view.len().saturating_sub(1));
        let events = self.visible_events().count();
        self.event_sel = self.event_sel.min(events.saturating_sub(1));
    }

    fn set_filter(&mut self, filter: Filter) {
        self.filter = filter;
        self.refresh_flow_view();
        self.clamp_selections();
    }

    fn handle_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(mut input) = self.filter_input.take() {
            match key.code {
                KeyCode::Enter => {}
                KeyCode::Esc => self.set_filter(self.filter_before_edit.clone()),
                KeyCode::Backspace | KeyCode::Char(_) => {
                    match key.code {
                        KeyCode::Char(c) => input.push(c),
                        _ => _ = input.pop(),
                    }
                    self.set_filter(Filter::parse(&input));
                    self.filter_input = Some(input);
                }
                _ => self.filter_input = Some(input),
            }
            return;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            if key.code == KeyCode::Char('q') {
                self.quit = true;
            }
            return;
        }
        if self.path_view.is_some() && matches!(key.code, KeyCode::Esc | KeyCode::Enter) {
            self.path_view = None;
            return;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => self.focus = self.focus.next(),
            KeyCode::BackTab => self.focus = self.focus.prev(),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX),
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.refresh_flow_view();
            }
            KeyCode::Char('/') => {
                self.filter_before_edit = self.filter.clone();
                self.filter_input = Some(self.filter.text().to_owned());
            }
            KeyCode::Char('p') => self.toggle_pause(),
            KeyCode::Enter => self.open_path(),
            _ => {}
        }
    }

    fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            for event in std::mem::take(&mut self.held) {
                self.handle_event(event);
            }
        }
    }

    fn open_path(&mut self) {
        let flow = match self.focus {
            Panel::Flows => self.flow_view.get(self.flow_sel).cloned(),
            Panel::Events => self
                .visible_events()
                .nth(self.event_sel)
                .and_then(|e| e.flow.clone())
                .filter(|f| self.flows.contains_key(f)),
            Panel::Hops => None,
        };
        if flow.is_some() {
            self.path_view = flow;
        }
    }

    fn move_selection(&mut self, by: isize) {
        let len = match self.focus {
            Panel::Hops => self.visible_hops().count(),
            Panel::Flows => self.flow_view.len(),
            Panel::Events => self.visible_events().count(),
        };
        let sel = match self.focus {
            Panel::Hops => &mut self.hop_sel,
            Panel::Flows => &mut self.flow_sel,
            Panel::Events => &mut self.event_sel,
        };
        let last = len.saturating_sub(1);
        *sel = sel.saturating_add_signed(by).min(last);
        if self.focus == Panel::Flows {
            self.followed_flow = if self.flow_sel == 0 {
                None
            } else {
                self.flow_view.get(self.flow_sel).cloned()
            };
        }
        // While a path is open, moving through the flows moves the path along.
        if self.focus == Panel::Flows && self.path_view.is_some() {
            self.path_view = self.flow_view.get(self.flow_sel).cloned();
        }
    }

    /// The hop where a flow's path loses packets ([`judge::path_verdict`]).
    pub fn path_verdict(entry: &FlowEntry) -> PathVerdict {
        let hops: Vec<(u64, u64)> = entry
            .hops
            .iter()
            .map(|h| (h.counts.drops, h.counts.bytes))
            .collect();
        judge::path_verdict(&hops, entry.total.drops)
    }
}
