//! Floods folded, per interval: for each (kind, hop, flow, reason), the first `--event-lines`
//! anomalies become lines of their own (and evidence packets); the rest fold into one line
//! with `count`. Every anomaly is still charged to its hop and flow ([`super::interval`]), so
//! hop lines, flow faults and the summary stay exact; a flood costs lines in proportion to
//! its distinct keys, not to its packets.

use std::collections::HashMap;

use super::{
    anomaly::{Anomaly, AnomalyKind},
    packet::Flow,
};

/// Lines per (kind, hop, flow, reason) and interval unless `--event-lines` says otherwise.
pub const DEFAULT_EVENT_LINES: u32 = 100;

/// Distinct keys one interval tracks. Beyond them (a scan of random ports or addresses), the
/// anomalies of new keys fold by (kind, hop, reason) without their flow: memory stays bounded
/// and the totals exact.
pub const FOLD_KEYS_MAX: usize = 16_384;

/// What anomalies count as identical: their kind, hop, flow and reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: AnomalyKind,
    netns: u64,
    ifindex: Option<u32>,
    dir: Option<u32>,
    flow: Option<Flow>,
    reason: Option<String>,
    /// Folded for want of room for its own key: never a line of its own.
    overflow: bool,
}

impl Key {
    fn of(anomaly: &Anomaly) -> Self {
        Self {
            kind: anomaly.kind,
            netns: anomaly.netns,
            ifindex: anomaly.ifindex,
            dir: anomaly.hop_direction.map(|d| d as u32),
            flow: anomaly.flow.clone(),
            reason: anomaly.reason.clone(),
            overflow: false,
        }
    }
}

#[derive(Debug, Default)]
struct Fold {
    lines: u32,
    /// The first folded anomaly, standing for all of them (`count`).
    folded: Option<Anomaly>,
}

/// The interval's folding state.
#[derive(Debug, Default)]
pub struct Folding {
    /// Lines per key and interval; 0: every anomaly is a line.
    limit: u32,
    keys: HashMap<Key, Fold>,
}

impl Folding {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            keys: HashMap::new(),
        }
    }

    /// Whether `anomaly` becomes a line of its own (with its evidence); if not, it is folded
    /// into its key's line of this interval.
    pub fn line(&mut self, anomaly: &Anomaly) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut key = Key::of(anomaly);
        if !self.keys.contains_key(&key) && self.keys.len() >= FOLD_KEYS_MAX {
            key.flow = None;
            key.overflow = true;
        }
        let overflow = key.overflow;
        let fold = self.keys.entry(key).or_default();
        if !overflow && fold.lines < self.limit {
            fold.lines += 1;
            return true;
        }
        let n = anomaly.count.unwrap_or(1);
        match &mut fold.folded {
            Some(line) => line.count = Some(line.count.unwrap_or(1).saturating_add(n)),
            None => {
                let mut line = anomaly.clone();
                line.evidence = None;
                line.pcap_frame = None;
                line.count = Some(n);
                if overflow {
                    line.flow = None;
                    line.outer = None;
                }
                fold.folded = Some(line);
            }
        }
        false
    }

    /// The interval's folded lines, earliest first; the next interval starts afresh.
    pub fn take(&mut self) -> Vec<Anomaly> {
        let mut lines: Vec<Anomaly> = self
            .keys
            .drain()
            .filter_map(|(_, fold)| fold.folded)
            .collect();
        lines.sort_by_key(|a| a.ktime_ns);
        if self.keys.capacity() > 4 * FOLD_KEYS_MAX {
            self.keys.shrink_to(FOLD_KEYS_MAX);
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::anomaly::tests_support::empty;

    fn fragment(sport: u16, ktime_ns: u64) -> Anomaly {
        let mut a = empty();
        a.kind = AnomalyKind::Fragment;
        a.netns = 7;
        a.ifindex = Some(3);
        a.ktime_ns = ktime_ns;
        a.flow = Some(Flow {
            proto: 17,
            src: "198.19.1.2".parse().unwrap(),
            dst: "198.19.2.2".parse().unwrap(),
            sport,
            dport: 7777,
        });
        a.evidence = Some(crate::observe::anomaly::Evidence::new(
            crate::observe::anomaly::Link::Ip,
            vec![0x45; 20],
            20,
        ));
        a
    }

    #[test]
    fn the_first_lines_of_a_key_stand_and_the_rest_fold_into_one() {
        let mut folding = Folding::new(3);
        let lines: Vec<bool> = (0..10).map(|i| folding.line(&fragment(1, i))).collect();
        assert_eq!(
            lines,
            [
                true, true, true, false, false, false, false, false, false, false
            ]
        );
        // Another flow is another key.
        assert!(folding.line(&fragment(2, 20)));
        let folded = folding.take();
        assert_eq!(folded.len(), 1);
        assert_eq!(folded[0].count, Some(7));
        assert_eq!(
            folded[0].ktime_ns, 3,
            "the first folded one stands for them"
        );
        assert!(folded[0].evidence.is_none(), "no evidence for folded lines");
        // A new interval: lines again.
        assert!(folding.line(&fragment(1, 30)));
        assert!(folding.take().is_empty());
    }

    #[test]
    fn counts_add_up_and_no_limit_folds_nothing() {
        let mut folding = Folding::new(1);
        let mut retransmit = fragment(1, 0);
        retransmit.kind = AnomalyKind::Retransmit;
        retransmit.count = Some(3);
        assert!(folding.line(&retransmit));
        assert!(!folding.line(&retransmit));
        assert!(!folding.line(&retransmit));
        assert_eq!(folding.take()[0].count, Some(6));
        let mut all = Folding::new(0);
        assert!((0..1000).all(|i| all.line(&fragment(1, i))));
        assert!(all.take().is_empty());
    }

    #[test]
    fn beyond_the_key_bound_new_keys_fold_without_their_flow() {
        let mut folding = Folding::new(100);
        for port in 0..FOLD_KEYS_MAX {
            assert!(folding.line(&fragment(port as u16, port as u64)));
        }
        let extra = 5000;
        let lines = (0..extra)
            .filter(|i| folding.line(&fragment(FOLD_KEYS_MAX as u16 + *i as u16, 1 << 40)))
            .count();
        assert_eq!(lines, 0);
        let folded = folding.take();
        assert_eq!(folded.len(), 1);
        assert_eq!(folded[0].count, Some(extra));
        assert!(folded[0].flow.is_none());
    }
}
