//! The effects pattern.
//!
//! A state machine in this crate never sends a message, arms a timer or logs a state change
//! itself. An operation returns its result together with the effects it implies, as plain
//! data; the caller (the NIF shell, or a Rust program) carries them out. Each feature defines
//! its own effect enum, e.g. a lock grant to deliver to a waiter or a breaker transition to
//! publish.

/// A result plus the effects the caller must carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "effects must be carried out by the caller"]
pub struct WithEffects<T, E> {
    /// What the operation returns to its caller.
    pub value: T,
    /// What the caller must do on the operation's behalf, in order.
    pub effects: Vec<E>,
}

impl<T, E> WithEffects<T, E> {
    /// A result with no effects.
    pub fn pure(value: T) -> Self {
        Self {
            value,
            effects: Vec::new(),
        }
    }

    /// A result with the given effects.
    pub fn new(value: T, effects: Vec<E>) -> Self {
        Self { value, effects }
    }

    /// Transforms the result, keeping the effects.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> WithEffects<U, E> {
        WithEffects {
            value: f(self.value),
            effects: self.effects,
        }
    }

    /// Splits into the result and the effects.
    pub fn into_parts(self) -> (T, Vec<E>) {
        (self.value, self.effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_effects_in_order() {
        let w: WithEffects<u32, &str> = WithEffects::new(2, vec!["first", "second"]);
        let (value, effects) = w.map(|v| v * 10).into_parts();
        assert_eq!(value, 20);
        assert_eq!(effects, vec!["first", "second"]);
    }

    #[test]
    fn pure_has_no_effects() {
        let w: WithEffects<(), u8> = WithEffects::pure(());
        assert!(w.effects.is_empty());
    }
}
