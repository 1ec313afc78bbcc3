//! Timeouts for the request path that cost nothing unless the request waits.
//!
//! `tokio::time::timeout` makes its timer up front: a clock read and a clone of the runtime's
//! handle (a reference count that every worker thread writes), then the drop of both. Most
//! requests on the path never wait on these timeouts (a fresh instance's whole call, a body
//! already read, a request's head that is ready in one poll), so [`timeout_at`] and
//! [`timeout`] make the timer only when the future first returns `Pending`. They behave as
//! tokio's otherwise: the future is polled first, so one that is ready never times out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The future did not finish in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

/// `future`, unless `deadline` passes first.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        limit: Limit::At(deadline),
        timer: Timer::Unarmed,
    }
}

/// `future`, unless it is still waiting `limit` after it first waited. Measured from then, not
/// from the call: a poll's own work (bounded by the guest's epoch yields and the host's CPU
/// limits) comes on top. For limits of seconds and more, where that is noise.
pub fn timeout<F: Future>(limit: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        limit: Limit::After(limit),
        timer: Timer::Unarmed,
    }
}

#[derive(Clone, Copy)]
enum Limit {
    At(Instant),
    After(Duration),
}

pin_project_lite::pin_project! {
    /// See [`timeout_at`] and [`timeout`].
    pub struct Timeout<F> {
        #[pin]
        future: F,
        limit: Limit,
        #[pin]
        timer: Timer,
    }
}

pin_project_lite::pin_project! {
    #[project = TimerProj]
    enum Timer {
        Unarmed,
        Armed { #[pin] sleep: Sleep },
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if let TimerProj::Unarmed = this.timer.as_mut().project() {
            let sleep = match *this.limit {
                Limit::At(deadline) => tokio::time::sleep_until(deadline),
                Limit::After(limit) => tokio::time::sleep(limit),
            };
            this.timer.set(Timer::Armed { sleep });
        }
        match this.timer.project() {
            TimerProj::Armed { sleep } => sleep.poll(cx).map(|()| Err(Elapsed)),
            TimerProj::Unarmed => unreachable!("armed above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_future_never_times_out_even_past_its_deadline() {
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(timeout_at(past, async { 7 }).await, Ok(7));
        assert_eq!(timeout(Duration::ZERO, async { 8 }).await, Ok(8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_times_out_at_the_deadline() {
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(
            timeout_at(started + Duration::from_secs(3), never).await,
            Err(Elapsed)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(timeout(Duration::from_secs(2), never).await, Err(Elapsed));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_waits_then_finishes_in_time_gives_its_output() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            9
        };
        assert_eq!(timeout(Duration::from_secs(5), slow).await, Ok(9));
    }
}
