//! Statistics over repeated runs: a figure's median with its minimum and
//! maximum ([`Spread`]), and ratios between two strategies of the same run
//! ([`ratio`]).
//!
//! The machine is a shared VM (DESIGN.md): one run says little, so every
//! figure is the median of repeats, reported with its range; comparisons are
//! ratios of medians measured side by side in one run, never against numbers
//! from another day.

use serde::Serialize;

/// Median, minimum and maximum of one figure over the repeats of a strategy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The median (of an even count: the upper middle value, a value that
    /// was measured rather than an average of two).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, NaNs left out; `None` if nothing is left.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: *v.get(v.len() / 2)?,
            min: *v.first()?,
            max: *v.last()?,
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} ({:.1}–{:.1})", self.median, self.min, self.max)
    }
}

/// `value / reference`, the ratio of two medians; `None` when the reference
/// is zero or either is not a finite number (a ratio to nothing says
/// nothing).
pub fn ratio(value: f64, reference: f64) -> Option<f64> {
    (value.is_finite() && reference.is_finite() && reference != 0.0).then(|| value / reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of([3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        // Even: the upper middle value.
        let s = Spread::of([4.0, 1.0, 3.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 4.0));
        let s = Spread::of([7.5]).expect("one value");
        assert_eq!((s.median, s.min, s.max), (7.5, 7.5, 7.5));
    }

    #[test]
    fn spread_of_nothing_and_nans() {
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([f64::NAN]), None);
        let s = Spread::of([f64::NAN, 5.0, 1.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (5.0, 1.0, 5.0));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(6.0, 3.0), Some(2.0));
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(ratio(1.0, f64::INFINITY), None);
    }

    #[test]
    fn display_is_median_then_range() {
        let s = Spread::of([1.0, 2.0, 3.0]).expect("values");
        assert_eq!(s.to_string(), "2.0 (1.0–3.0)");
    }
}
