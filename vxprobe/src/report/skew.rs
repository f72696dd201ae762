//! Clock skew between two nodes, measured from their recordings alone: the packets of the
//! flows that leave one node's underlay and arrive at the other's are the same packets, so the
//! two rate curves over time are one curve, shifted by the difference of the clocks. The shift
//! that correlates them best is the skew (both directions together, so the wire's delay
//! cancels out).

use super::read::{Micros, Recording};

/// Counts over time: intervals `(start, end, count)` in order.
pub type Series = Vec<(Micros, Micros, f64)>;

#[derive(Clone, Debug, PartialEq)]
pub struct Measure {
    /// The other node's clock minus the reference's.
    pub offset: Micros,
    /// Pearson correlation of the two rate curves at that offset.
    pub correlation: f64,
    /// Packets the measure rests on (both curves, all directions).
    pub packets: u64,
    /// What the measure can tell: half the window its counts were compared over (the traffic's
    /// intervals), or half the spread of offsets that match as well, whichever is larger.
    pub resolution: Micros,
}

/// Below this, the best match is not trusted.
const MIN_CORRELATION: f64 = 0.5;
/// Grid points a curve is compared at, at most (long recordings use a coarser grid).
const MAX_GRID: i64 = 4000;
/// Offsets scored in one pass of the search, at most.
const MAX_OFFSETS: i64 = 4000;

/// The skew of `other`'s clock against `reference`'s, searched within `max`; `None` when the
/// traffic between them cannot tell (none, or too steady, or no match).
pub fn measure(reference: &Recording, other: &Recording, max: Micros) -> Option<Measure> {
    let pairs = [
        underlay_pair(reference, other),
        underlay_pair(other, reference),
    ];
    // In the reverse pair the reference's curve is the second: correlate as (ref, other).
    let pairs = [pairs[0].clone(), (pairs[1].1.clone(), pairs[1].0.clone())];
    let step = reference.interval_len().min(other.interval_len()) / 4;
    best_offset(&pairs, max, step.max(1000))
}

/// Per interval of each node, the packets of the flows that left `from`'s underlay and were
/// seen arriving at `to`'s (same 5-tuple and VNI).
fn underlay_pair(from: &Recording, to: &Recording) -> (Series, Series) {
    let side = |rec: &Recording, dir: &str, peer: &Recording, peer_dir: &str| -> Series {
        let mut per_interval = vec![0.0; rec.intervals.len()];
        for (flow, hops) in &rec.flows {
            let Some(peer_hops) = peer.flows.get(flow) else {
                continue;
            };
            for ((hop, vni), series) in hops {
                let underlay = matches!(series.role.as_str(), "underlay" | "physical");
                if !underlay || hop.dir != dir {
                    continue;
                }
                let seen_there = peer_hops.iter().any(|((h, v), s)| {
                    v == vni
                        && h.dir == peer_dir
                        && matches!(s.role.as_str(), "underlay" | "physical")
                });
                if !seen_there {
                    continue;
                }
                for p in &series.points {
                    per_interval[p.interval] += p.segs as f64;
                }
            }
        }
        rec.intervals
            .iter()
            .zip(per_interval)
            .map(|(i, n)| (i.start(), i.end, n))
            .collect()
    };
    (
        side(from, "egress", to, "ingress"),
        side(to, "ingress", from, "egress"),
    )
}

/// Cumulative count at `t`, counts spread evenly over their intervals.
fn cumulative(series: &Series, prefix: &[f64], t: Micros) -> f64 {
    // Intervals ending at or before t count whole.
    let whole = series.partition_point(|(_, end, _)| *end <= t);
    let mut sum = prefix[whole];
    if let Some((start, end, n)) = series.get(whole)
        && t > *start
    {
        sum += n * (t - start) as f64 / (end - start).max(1) as f64;
    }
    sum
}

fn prefix(series: &Series) -> Vec<f64> {
    let mut out = Vec::with_capacity(series.len() + 1);
    out.push(0.0);
    let mut sum = 0.0;
    for (_, _, n) in series {
        sum += n;
        out.push(sum);
    }
    out
}

/// The offset within `±max` at which the second curve of each pair matches the first best,
/// compared on a grid of `step`; ties go to the offset nearest 0.
pub fn best_offset(pairs: &[(Series, Series)], max: Micros, step: Micros) -> Option<Measure> {
    let pairs: Vec<&(Series, Series)> = pairs
        .iter()
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .collect();
    let packets: f64 = pairs
        .iter()
        .map(|(a, b)| a.iter().chain(b).map(|p| p.2).sum::<f64>())
        .sum();
    if pairs.is_empty() || packets < 1.0 {
        return None;
    }
    let span = pairs
        .iter()
        .map(|(a, _)| a.last().map_or(0, |l| l.1) - a.first().map_or(0, |f| f.0))
        .max()
        .unwrap_or(0);
    // Each curve is only as sharp as the intervals that carry its traffic: compare counts over
    // windows as long as the coarsest of those (a recorder that stalled for a second holds
    // its traffic in one long interval, and no shift finer than that can be told).
    let window = pairs
        .iter()
        .flat_map(|(a, b)| [a, b])
        .map(|series| {
            let (weighted, total) = series.iter().fold((0.0, 0.0), |(w, t), (s, e, n)| {
                (w + (e - s) as f64 * n, t + n)
            });
            if total > 0.0 {
                (weighted / total) as Micros
            } else {
                0
            }
        })
        .max()
        .unwrap_or(0)
        .max(step);
    let step = step.max(window / 4).max(span / MAX_GRID).max(1);
    let prepared: Vec<_> = pairs
        .iter()
        .map(|(a, b)| (a, prefix(a), b, prefix(b)))
        .collect();
    let correlation = |offset: Micros| -> Option<(f64, f64)> {
        let (mut n, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for (a, pa, b, pb) in &prepared {
            let (a0, a1) = (a[0].0, a[a.len() - 1].1);
            let (b0, b1) = (b[0].0, b[b.len() - 1].1);
            let start = a0.max(b0 - offset);
            let end = a1.min(b1 - offset);
            let mut t = start;
            while t + window <= end {
                let x = cumulative(a, pa, t + window) - cumulative(a, pa, t);
                let y = cumulative(b, pb, t + offset + window) - cumulative(b, pb, t + offset);
                n += 1.0;
                sx += x;
                sy += y;
                sxx += x * x;
                syy += y * y;
                sxy += x * y;
                t += step;
            }
        }
        if n < 8.0 {
            return None;
        }
        let vx = sxx - sx * sx / n;
        let vy = syy - sy * sy / n;
        // Relative to the signal: rounding noise on a flat curve is not variation.
        if vx <= 1e-9 * sxx.max(1.0) || vy <= 1e-9 * syy.max(1.0) {
            return None;
        }
        Some(((sxy - sx * sy / n) / (vx * vy).sqrt(), (sx + sy) / packets))
    };
    // Correlation over the span both curves cover at `offset`, weighted by the share of all
    // the traffic that span holds: an offset that pushes the traffic of one node out of the
    // other's recording must not win on the little that is left.
    let score = |offset: Micros| -> Option<f64> {
        let (c, covered) = correlation(offset)?;
        Some(c * covered)
    };
    let scan = |from: Micros, to: Micros, step: Micros| -> Vec<(Micros, f64)> {
        let mut scores = Vec::new();
        let mut offset = from;
        while offset <= to {
            if let Some(c) = score(offset) {
                scores.push((offset, c));
            }
            offset += step;
        }
        scores
    };
    // At most MAX_OFFSETS offsets a pass: short intervals over a long span would otherwise
    // mean tens of thousands of offsets, each scored over the whole grid.
    let step = step.max(2 * max / MAX_OFFSETS);
    let (low, high) = plateau(&scan(-max, max, step))?;
    // Finer across the plateau found (and a step beyond each end).
    let fine_step = (step / 8).max(1).max((high - low + 2 * step) / MAX_OFFSETS);
    let (low, high) = plateau(&scan(low - step, high + step, fine_step)).unwrap_or((low, high));
    let offset = low + (high - low) / 2;
    let (correlation, _) = correlation(offset)?;
    (correlation >= MIN_CORRELATION).then_some(Measure {
        offset,
        correlation: (correlation * 1000.0).round() / 1000.0,
        packets: packets.round() as u64,
        resolution: (window / 2).max((high - low) / 2),
    })
}

/// Counts per interval smear the curves, so the best match is a plateau of offsets as wide as
/// an interval: its middle is the estimate. Where several offsets match as well (periodic
/// traffic), the plateau nearest 0 wins.
fn plateau(scores: &[(Micros, f64)]) -> Option<(Micros, Micros)> {
    let best = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    if !best.is_finite() {
        return None;
    }
    let mut runs: Vec<(Micros, Micros)> = Vec::new();
    let mut open = false;
    for &(offset, c) in scores {
        if c >= best - 0.01 {
            match runs.last_mut() {
                Some(run) if open => run.1 = offset,
                _ => runs.push((offset, offset)),
            }
            open = true;
        } else {
            open = false;
        }
    }
    runs.into_iter()
        .min_by_key(|(low, high)| (low + (high - low) / 2).abs())
}
