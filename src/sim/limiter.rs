//! The sliding-window rate limit (one window per limiter key), on tokio's clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The window the API's "N requests per second" is counted over.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Admits at most `limit` requests in any window of [`WINDOW`]: a request at `t` is
/// admitted when fewer than `limit` admitted requests arrived in `(t - 1 s, t]`.
/// Refused requests are not recorded, so they do not use up the allowance.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    /// 0 means unlimited (the window still counts, for the stats).
    limit: u32,
    admitted: VecDeque<Instant>,
    max_in_window: u64,
}

impl SlidingWindow {
    pub(super) fn new(limit: u32) -> SlidingWindow {
        SlidingWindow {
            limit,
            admitted: VecDeque::new(),
            max_in_window: 0,
        }
    }

    /// Admits or refuses a request arriving at `now` (calls come in time order).
    pub(super) fn try_admit(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.admitted.front() {
            if now.saturating_duration_since(oldest) >= WINDOW {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
        if self.limit > 0 && self.admitted.len() >= self.limit as usize {
            return false;
        }
        self.admitted.push_back(now);
        // The busiest window always ends at an admission, so this is the maximum over all windows.
        self.max_in_window = self.max_in_window.max(self.admitted.len() as u64);
        true
    }

    /// Changes the limit from now on (0: unlimited). Admissions already in the window
    /// still count: after lowering it, nothing is admitted until they age out.
    pub(super) fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
    }

    /// The most admissions seen in any window so far.
    pub(super) fn max_in_window(&self) -> u64 {
        self.max_in_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_not_fixed() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = SlidingWindow::new(3);
        assert!(w.try_admit(ms(0)));
        assert!(w.try_admit(ms(500)));
        assert!(w.try_admit(ms(900)));
        // A fixed window starting at 1000 would admit this one: the sliding one does not.
        assert!(!w.try_admit(ms(999)));
        assert!(w.try_admit(ms(1000)));
        assert!(!w.try_admit(ms(1400)));
        assert!(w.try_admit(ms(1500)));
        assert_eq!(w.max_in_window(), 3);
    }

    #[test]
    fn refusals_do_not_use_the_allowance() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(1);
        assert!(w.try_admit(t0));
        for n in 1..10 {
            assert!(!w.try_admit(t0 + Duration::from_millis(n * 100)));
        }
        assert!(w.try_admit(t0 + WINDOW));
    }

    #[test]
    fn a_changed_limit_applies_from_then_on() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = SlidingWindow::new(4);
        for n in 0..3 {
            assert!(w.try_admit(ms(n)));
        }
        w.set_limit(2);
        // Three already in the window: none more until two have aged out.
        assert!(!w.try_admit(ms(10)));
        assert!(!w.try_admit(ms(1000)));
        assert!(w.try_admit(ms(1002)));
        assert!(w.try_admit(ms(1003)));
        assert!(!w.try_admit(ms(1004)));
        w.set_limit(5);
        for n in 0..3 {
            assert!(w.try_admit(ms(1005 + n)));
        }
        assert!(!w.try_admit(ms(1010)));
    }

    #[test]
    fn unlimited_still_counts() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(0);
        for n in 0..25 {
            assert!(w.try_admit(t0 + Duration::from_millis(n * 10)));
        }
        assert_eq!(w.max_in_window(), 25);
    }
}
