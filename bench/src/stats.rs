//! Distributions of repeated measurements: medians and spread, never a single number.

use serde::Serialize;

/// A sample summarized: median, quartiles, extremes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Dist {
    pub n: usize,
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        Self {
            n: v.len(),
            median: quantile(&v, 0.5),
            p25: quantile(&v, 0.25),
            p75: quantile(&v, 0.75),
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// `median (min-max)` with `digits` decimals, scaled by `scale`.
    pub fn show(&self, scale: f64, digits: usize) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        if self.n == 1 {
            return format!("{:.digits$}", self.median * scale);
        }
        format!(
            "{:.digits$} ({:.digits$}-{:.digits$})",
            self.median * scale,
            self.min * scale,
            self.max * scale
        )
    }
}

/// Linear interpolation between the closest ranks of a sorted sample.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// The order of the arms in round `round`: rotated each round, so no arm always runs first
/// (right after a build finished, say) or always follows the same one.
pub fn rotation<T: Copy>(arms: &[T], round: usize) -> Vec<T> {
    let k = round % arms.len().max(1);
    arms[k..].iter().chain(&arms[..k]).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles() {
        let d = Dist::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((d.n, d.median, d.min, d.max), (5, 3.0, 1.0, 5.0));
        assert_eq!((d.p25, d.p75), (2.0, 4.0));
        assert_eq!(Dist::of(&[1.0, 2.0]).median, 1.5);
        assert_eq!(Dist::of(&[f64::NAN]).n, 0);
    }

    #[test]
    fn rotations_cover_every_position() {
        assert_eq!(rotation(&['a', 'b', 'c'], 0), ['a', 'b', 'c']);
        assert_eq!(rotation(&['a', 'b', 'c'], 1), ['b', 'c', 'a']);
        assert_eq!(rotation(&['a', 'b', 'c'], 5), ['c', 'a', 'b']);
    }
}
