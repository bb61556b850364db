//! Lossy links under a retransmitting link layer, as a scheduler wrapper.
//!
//! The replica's transport numbers the frames of each link, keeps them until the peer
//! acknowledges them and writes them again after a retransmission timeout (doubling while none
//! comes). Over a link that loses a share of its frames, a message is therefore not lost but late:
//! each time it is lost it arrives a timeout later. [`Lossy`] models exactly that around another
//! scheduler: it takes the inner scheduler's delay, and while a draw says the message is lost it
//! adds the current timeout and doubles it. Lost messages are not dropped: simnet's protocol tests
//! check the protocols over the link the transport gives them.

use fides_types::NodeIndex;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::{Micros, Scheduler};

/// The most times one message is lost in a row; beyond this it gets through (so that a delay is
/// always finite, whatever the loss probability).
const LOSSES_IN_A_ROW_MAX: u32 = 16;

/// Another scheduler's delays, plus retransmission timeouts for messages the link loses.
#[derive(Clone, Debug)]
pub struct Lossy<S> {
    /// The scheduler of the messages that get through the first time.
    pub inner: S,
    /// The probability that one transmission of a message between two replicas is lost.
    pub loss: f64,
    /// The first retransmission timeout; each further loss of the same message waits twice as long.
    pub retransmit_timeout: Micros,
}

impl<S> Lossy<S> {
    /// `inner`'s links, losing each transmission with probability `loss` and resending after
    /// `retransmit_timeout` (doubling).
    pub fn new(inner: S, loss: f64, retransmit_timeout: Micros) -> Self {
        Lossy { inner, loss: loss.clamp(0.0, 1.0), retransmit_timeout }
    }

    /// The extra delay of one message: the timeouts of its lost transmissions.
    fn retransmissions(&self, rng: &mut ChaCha8Rng) -> Micros {
        let mut extra: Micros = 0;
        let mut timeout = self.retransmit_timeout;
        for _ in 0..LOSSES_IN_A_ROW_MAX {
            if !rng.gen_bool(self.loss) {
                break;
            }
            extra = extra.saturating_add(timeout);
            timeout = timeout.saturating_mul(2);
        }
        extra
    }
}

impl<M, S: Scheduler<M>> Scheduler<M> for Lossy<S> {
    fn delay(
        &mut self,
        now: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: Option<&M>,
        rng: &mut ChaCha8Rng,
    ) -> Micros {
        let delay = self.inner.delay(now, from, to, message, rng);
        // A replica's messages to itself do not cross a link.
        if from == to {
            return delay;
        }
        delay.saturating_add(self.retransmissions(rng))
    }

    fn wants_retime(&mut self) -> bool {
        self.inner.wants_retime()
    }

    fn retime(
        &mut self,
        now: Micros,
        arrival: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: Option<&M>,
        rng: &mut ChaCha8Rng,
    ) -> Option<Micros> {
        self.inner.retime(now, arrival, from, to, message, rng)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    struct Fixed;

    impl Scheduler<()> for Fixed {
        fn delay(&mut self, _: Micros, _: NodeIndex, _: NodeIndex, _: Option<&()>, _: &mut ChaCha8Rng) -> Micros {
            10
        }
    }

    #[test]
    fn a_lost_message_arrives_a_doubling_timeout_later_and_never_later_than_the_bound() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut never = Lossy::new(Fixed, 0.0, 1_000);
        let mut always = Lossy::new(Fixed, 1.0, 1_000);
        let (a, b) = (NodeIndex(0), NodeIndex(1));
        assert_eq!(Scheduler::<()>::delay(&mut never, 0, a, b, None, &mut rng), 10);
        let most = 10 + 1_000 * ((1 << LOSSES_IN_A_ROW_MAX) - 1);
        assert_eq!(Scheduler::<()>::delay(&mut always, 0, a, b, None, &mut rng), most);
        assert_eq!(Scheduler::<()>::delay(&mut always, 0, a, a, None, &mut rng), 10, "no link to oneself");
        let mut some = Lossy::new(Fixed, 0.5, 1_000);
        let delays: Vec<Micros> =
            (0..200).map(|_| Scheduler::<()>::delay(&mut some, 0, a, b, None, &mut rng)).collect();
        assert!(delays.contains(&10) && delays.contains(&1_010) && delays.contains(&3_010));
        assert!(delays.iter().all(|d| (d - 10) % 1_000 == 0 && *d <= most));
    }
}
