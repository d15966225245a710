//! The latency histogram and the answers, by status, of one kind of request.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latency and answers of one kind of request.
#[derive(Debug, Clone)]
pub struct OpStats {
    histogram: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    errors: u64,
}

impl OpStats {
    /// Empty statistics (latencies from 1 µs to a minute, three significant digits).
    ///
    /// # Errors
    /// Never in practice: the histogram's bounds are constants.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            statuses: BTreeMap::new(),
            errors: 0,
        })
    }

    /// One request: how long it took, its status (`None`: no answer) and whether it was the
    /// answer wanted.
    pub fn record(&mut self, elapsed: Duration, status: Option<u16>, ok: bool) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
        let key = status.map_or_else(|| "transport".to_owned(), |s| s.to_string());
        *self.statuses.entry(key).or_default() += 1;
        if !ok {
            self.errors += 1;
        }
    }

    /// Adds the requests of `other`.
    ///
    /// # Errors
    /// Never in practice: every histogram has the same bounds.
    pub fn add(&mut self, other: &OpStats) -> anyhow::Result<()> {
        self.histogram.add(&other.histogram)?;
        self.errors += other.errors;
        for (status, n) in &other.statuses {
            *self.statuses.entry(status.clone()).or_default() += n;
        }
        Ok(())
    }

    pub fn requests(&self) -> u64 {
        self.histogram.len()
    }

    /// Requests answered with `status` ("transport": not answered).
    pub fn with_status(&self, status: &str) -> u64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }

    /// The latency at quantile `q`, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// Requests per second of each status over `seconds`.
    pub fn rps_by_status(&self, seconds: f64) -> BTreeMap<String, f64> {
        self.statuses
            .iter()
            .map(|(status, n)| (status.clone(), *n as f64 / seconds))
            .collect()
    }

    /// The figures over `seconds`: requests, rates, errors, statuses, latency percentiles.
    pub fn summary(&self, seconds: f64) -> Value {
        json!({
            "requests": self.histogram.len(),
            "rps": self.histogram.len() as f64 / seconds,
            "errors": self.errors,
            "statuses": self.statuses,
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "max_ms": self.histogram.max() as f64 / 1000.0,
            "mean_ms": self.histogram.mean() / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_sums_requests_errors_and_statuses() {
        let mut a = OpStats::new().expect("bounds");
        a.record(Duration::from_millis(1), Some(200), true);
        let mut b = OpStats::new().expect("bounds");
        b.record(Duration::from_millis(3), Some(429), false);
        b.record(Duration::from_millis(3), None, false);

        a.add(&b).expect("same bounds");

        assert_eq!(a.requests(), 3);
        assert_eq!(a.errors, 2);
        assert_eq!(a.with_status("200"), 1);
        assert_eq!(a.with_status("429"), 1);
        assert_eq!(a.with_status("transport"), 1);
    }

    #[test]
    fn rates_by_status_are_counts_over_the_seconds() {
        let mut stats = OpStats::new().expect("bounds");
        for _ in 0..4 {
            stats.record(Duration::from_millis(1), Some(200), true);
        }
        stats.record(Duration::from_millis(1), Some(429), false);

        let rates = stats.rps_by_status(2.0);

        assert_eq!(rates.get("200"), Some(&2.0));
        assert_eq!(rates.get("429"), Some(&0.5));
    }
}
