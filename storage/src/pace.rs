//! A byte rate for background work (scrub reads, catch-up copies), so
//! client I/O keeps its share of the device and the network. A token
//! bucket: at most a second's worth of bytes saves up while idle, so a
//! burst after a pause stays short, and work that ran ahead waits its debt
//! off before the next piece.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Paces bytes to a rate shared by every task that uses it.
#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes per second (0: no limit).
    rate: u64,
    /// Tokens (bytes) available now, negative when work ran ahead; when
    /// they were counted.
    tokens: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A bucket of `rate` bytes per second (0: no limit).
    pub fn new(rate: u64) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Takes `bytes` and says how long to wait before doing more.
    fn take(&self, bytes: u64) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        let rate = self.rate as f64;
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        t.0 = (t.0 + now.duration_since(t.1).as_secs_f64() * rate).min(rate);
        t.1 = now;
        t.0 -= bytes as f64;
        (t.0 < 0.0).then(|| Duration::from_secs_f64(-t.0 / rate))
    }

    /// Counts `bytes` just done and waits until more may be done.
    pub async fn pace(&self, bytes: u64) {
        if let Some(wait) = self.take(bytes) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_saves_up_and_the_rest_is_owed() {
        let b = TokenBucket::new(1000);
        std::thread::sleep(Duration::from_millis(1100));
        // A second's worth, no more, was saved up.
        assert_eq!(b.take(1000), None);
        let owed = b.take(500).expect("owes half a second");
        assert!(
            owed > Duration::from_millis(400) && owed <= Duration::from_millis(500),
            "{owed:?}"
        );
        assert_eq!(TokenBucket::new(0).take(u64::MAX), None);
    }
}
