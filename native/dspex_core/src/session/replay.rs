//! A replica's side of the log: entries applied strictly in sequence.

use std::hash::Hash;

use super::command::{Entry, Rejection};
use super::{Outcome, Session};
use crate::effects::WithEffects;

/// What [`Session::apply_entry`] did with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed<K, H> {
    /// Applied; the reply and the effects other than the log entry itself.
    Applied(WithEffects<super::Reply, super::Effect<K, H>>),
    /// Already applied (its sequence number is not above the session's): ignored.
    Duplicate,
}

/// Why an entry could not be applied. The session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayError<K, H> {
    /// Entries are missing between the session's last one and this one: the replica must
    /// catch up (from the log or a fresh image) before it applies more.
    Gap {
        /// The session's last sequence number.
        last: u64,
        /// The entry's.
        seq: u64,
    },
    /// The entry's command is refused here although it was accepted where it was logged:
    /// this session did not start from the same state.
    Diverged {
        /// The entry's sequence number.
        seq: u64,
        /// Why it was refused.
        rejection: Rejection<K, H>,
    },
}

impl<K: Eq + Hash + Clone, H: Clone + Eq> Session<K, H> {
    /// Applies a logged entry: the next one in sequence is applied at its own time, one at
    /// or below the session's sequence number is ignored, one further ahead is refused.
    ///
    /// # Errors
    /// [`ReplayError::Gap`] or [`ReplayError::Diverged`]; the session is then unchanged.
    pub fn apply_entry(&mut self, entry: Entry<K, H>) -> Result<Replayed<K, H>, ReplayError<K, H>> {
        if entry.seq <= self.seq {
            return Ok(Replayed::Duplicate);
        }
        if entry.seq != self.seq + 1 {
            return Err(ReplayError::Gap {
                last: self.seq,
                seq: entry.seq,
            });
        }
        let outcome: Outcome<K, H> = self.apply(entry.command, entry.at_ms);
        match outcome {
            Ok(out) => {
                let (reply, mut effects) = out.into_parts();
                effects.retain(|e| !matches!(e, super::Effect::Log(_)));
                Ok(Replayed::Applied(WithEffects::new(reply, effects)))
            }
            Err(rejection) => Err(ReplayError::Diverged {
                seq: entry.seq,
                rejection,
            }),
        }
    }
}
