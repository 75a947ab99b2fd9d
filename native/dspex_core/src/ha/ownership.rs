//! One session's ownership as one node sees it, with epochs.
//!
//! An [`Epoch`] is a counter plus the name of the node that minted it, ordered by counter
//! then name, so two nodes that both take a session over while cut off from each other still
//! mint different epochs and every node orders them the same way. Each ownership change
//! mints a new epoch above every epoch the minting node knows.
//!
//! ```text
//!   absent ──register──▶ owned ──begin_out──▶ migrating_out ──finish_out──▶ replica
//!     │                    ▲  ◀──abort_out───┘                              │
//!     │                    └──────────── promote (failover) ────────────────┘
//!     └──begin_in──▶ migrating_in ──finish_in──▶ owned      (abort_in: back to absent)
//! ```
//!
//! A write is accepted only in `owned`; `migrating_out` holds writes for the new owner.
//! [`Ownership::observe`] of a newer epoch demotes an owner (the partition-heal case), and
//! replicated changes carry the sender's epoch so a stale owner's are refused
//! ([`Ownership::accept_replicated`]).

use serde::{Deserialize, Serialize};

/// An ownership epoch: counter first, then the minting node's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// Grows with every ownership change.
    pub counter: u64,
    /// The node that minted it.
    pub node: String,
}

impl Epoch {
    /// The epoch before any ownership.
    pub fn zero() -> Self {
        Epoch {
            counter: 0,
            node: String::new(),
        }
    }

    /// The next epoch after `self`, minted by `node`.
    pub fn next(&self, node: &str) -> Self {
        Epoch {
            counter: self.counter + 1,
            node: node.to_owned(),
        }
    }
}

/// What this node is for the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Not held here (or no longer).
    Absent,
    /// The writer.
    Owned,
    /// Handing over to `target`: writes are held.
    MigratingOut {
        /// The node receiving the session.
        target: String,
    },
    /// Receiving from `source`.
    MigratingIn {
        /// The node sending the session.
        source: String,
    },
    /// A copy kept for failover; `owner` (at the epoch) writes.
    Replica,
}

/// Why a transition or a write is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Only the owner may do that; the owner known here is given.
    #[error("not the owner (owner {owner:?} at epoch {epoch:?})")]
    NotOwner {
        /// The owner this node knows of, if any.
        owner: Option<String>,
        /// The epoch it knows.
        epoch: Epoch,
    },
    /// A migration is already under way.
    #[error("already migrating")]
    Migrating,
    /// The sender's epoch is older than the one known here.
    #[error("stale epoch {got:?}, current {current:?}")]
    StaleEpoch {
        /// The epoch that came in.
        got: Epoch,
        /// The epoch known here.
        current: Epoch,
    },
    /// The session is already known here.
    #[error("already present here")]
    Present,
    /// That transition does not apply in this role.
    #[error("not possible while {0:?}")]
    WrongRole(Role),
}

/// One session's ownership on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    node: String,
    role: Role,
    epoch: Epoch,
    owner: Option<String>,
}

impl Ownership {
    /// Nothing known yet, on `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Ownership {
            node: node.into(),
            role: Role::Absent,
            epoch: Epoch::zero(),
            owner: None,
        }
    }

    /// The role here.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The newest epoch known here.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// The owner known here.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    fn not_owner(&self) -> Refusal {
        Refusal::NotOwner {
            owner: self.owner.clone(),
            epoch: self.epoch.clone(),
        }
    }

    fn not_older(&self, epoch: &Epoch) -> Result<(), Refusal> {
        if *epoch < self.epoch {
            return Err(Refusal::StaleEpoch {
                got: epoch.clone(),
                current: self.epoch.clone(),
            });
        }
        Ok(())
    }

    fn take(&mut self, epoch: Epoch) -> Epoch {
        self.role = Role::Owned;
        self.owner = Some(self.node.clone());
        self.epoch = epoch.clone();
        epoch
    }

    /// A new session created here: owned at a fresh epoch.
    ///
    /// # Errors
    /// [`Refusal::Present`] when the session is known here in any role but absent with no
    /// owner.
    pub fn register(&mut self) -> Result<Epoch, Refusal> {
        if self.role != Role::Absent || self.owner.is_some() {
            return Err(Refusal::Present);
        }
        let next = self.epoch.next(&self.node);
        Ok(self.take(next))
    }

    /// The owner starts handing the session to `target`.
    ///
    /// # Errors
    /// [`Refusal::Migrating`] during a migration, [`Refusal::NotOwner`] elsewhere.
    pub fn begin_out(&mut self, target: &str) -> Result<(), Refusal> {
        match self.role {
            Role::Owned if target != self.node => {
                self.role = Role::MigratingOut {
                    target: target.to_owned(),
                };
                Ok(())
            }
            Role::Owned => Err(Refusal::WrongRole(Role::Owned)),
            Role::MigratingOut { .. } | Role::MigratingIn { .. } => Err(Refusal::Migrating),
            _ => Err(self.not_owner()),
        }
    }

    /// The migration is called off: the owner writes again at the same epoch.
    ///
    /// # Errors
    /// [`Refusal::WrongRole`] when not migrating out.
    pub fn abort_out(&mut self) -> Result<(), Refusal> {
        match self.role {
            Role::MigratingOut { .. } => {
                self.role = Role::Owned;
                Ok(())
            }
            ref other => Err(Refusal::WrongRole(other.clone())),
        }
    }

    /// This node starts receiving the session from `source`, whose epoch is `epoch`.
    ///
    /// # Errors
    /// [`Refusal::StaleEpoch`] when `epoch` is older than known here; [`Refusal::Migrating`]
    /// or [`Refusal::WrongRole`] unless absent or a replica.
    pub fn begin_in(&mut self, source: &str, epoch: &Epoch) -> Result<(), Refusal> {
        self.not_older(epoch)?;
        match self.role {
            Role::Absent | Role::Replica => {
                self.role = Role::MigratingIn {
                    source: source.to_owned(),
                };
                self.epoch = epoch.clone();
                self.owner = Some(source.to_owned());
                Ok(())
            }
            Role::MigratingIn { .. } | Role::MigratingOut { .. } => Err(Refusal::Migrating),
            ref other => Err(Refusal::WrongRole(other.clone())),
        }
    }

    /// The transfer arrived and checked out: this node owns the session at a new epoch,
    /// which the caller tells the source ([`Ownership::finish_out`]) and everyone else
    /// ([`Ownership::observe`]).
    ///
    /// # Errors
    /// [`Refusal::WrongRole`] when not migrating in.
    pub fn finish_in(&mut self) -> Result<Epoch, Refusal> {
        match self.role {
            Role::MigratingIn { .. } => {
                let next = self.epoch.next(&self.node);
                Ok(self.take(next))
            }
            ref other => Err(Refusal::WrongRole(other.clone())),
        }
    }

    /// The transfer was refused or failed on this (receiving) side.
    ///
    /// # Errors
    /// [`Refusal::WrongRole`] when not migrating in.
    pub fn abort_in(&mut self) -> Result<(), Refusal> {
        match self.role {
            Role::MigratingIn { .. } => {
                self.role = Role::Absent;
                Ok(())
            }
            ref other => Err(Refusal::WrongRole(other.clone())),
        }
    }

    /// The target took over at `epoch`: this (former owner) node stops being the writer.
    ///
    /// Already stepped down at this very epoch (the target's announcement came first) is
    /// success too.
    ///
    /// # Errors
    /// [`Refusal::WrongRole`] when not migrating out; [`Refusal::StaleEpoch`] when `epoch`
    /// is not newer than the one known here.
    pub fn finish_out(&mut self, epoch: &Epoch) -> Result<(), Refusal> {
        // The target's announcement of this very epoch may arrive before its reply: then
        // `observe` already stepped this node down, and the hand-over is complete.
        if self.role == Role::Absent && self.epoch == *epoch {
            return Ok(());
        }
        let Role::MigratingOut { target } = &self.role else {
            return Err(Refusal::WrongRole(self.role.clone()));
        };
        if *epoch <= self.epoch {
            return Err(Refusal::StaleEpoch {
                got: epoch.clone(),
                current: self.epoch.clone(),
            });
        }
        self.owner = Some(target.clone());
        self.role = Role::Absent;
        self.epoch = epoch.clone();
        Ok(())
    }

    /// This node keeps a copy of a session `owner` writes at `epoch`.
    ///
    /// # Errors
    /// [`Refusal::StaleEpoch`] for an epoch older than known here; [`Refusal::WrongRole`]
    /// when this node owns or is moving the session.
    pub fn become_replica(&mut self, owner: &str, epoch: &Epoch) -> Result<(), Refusal> {
        self.not_older(epoch)?;
        match self.role {
            Role::Absent | Role::Replica => {
                self.role = Role::Replica;
                self.owner = Some(owner.to_owned());
                self.epoch = epoch.clone();
                Ok(())
            }
            ref other => Err(Refusal::WrongRole(other.clone())),
        }
    }

    /// Failover: a replica takes ownership at a new epoch.
    ///
    /// # Errors
    /// [`Refusal::WrongRole`] unless a replica.
    pub fn promote(&mut self) -> Result<Epoch, Refusal> {
        match self.role {
            Role::Replica => {
                let next = self.epoch.next(&self.node);
                Ok(self.take(next))
            }
            ref other => Err(Refusal::WrongRole(other.clone())),
        }
    }

    /// Another node says `owner` holds the session at `epoch`. A newer epoch is adopted, and
    /// an owner (or a node migrating) here is demoted: returns `true` when that happened, so
    /// the shell stops writing and hands its callers to the new owner.
    pub fn observe(&mut self, owner: &str, epoch: &Epoch) -> bool {
        if *epoch <= self.epoch {
            return false;
        }
        let demoted = !matches!(self.role, Role::Absent | Role::Replica);
        if demoted {
            self.role = Role::Absent;
        }
        self.epoch = epoch.clone();
        self.owner = Some(owner.to_owned());
        demoted
    }

    /// May a write be committed here now? Returns the epoch it is committed under.
    ///
    /// # Errors
    /// [`Refusal::Migrating`] while handing over (the shell holds the write);
    /// [`Refusal::NotOwner`] otherwise.
    pub fn accept_write(&self) -> Result<&Epoch, Refusal> {
        match self.role {
            Role::Owned => Ok(&self.epoch),
            Role::MigratingOut { .. } => Err(Refusal::Migrating),
            _ => Err(self.not_owner()),
        }
    }

    /// May a change replicated by `from` at `epoch` be kept here?
    ///
    /// # Errors
    /// [`Refusal::StaleEpoch`] when `epoch` is older than known here (a former owner that
    /// has not yet learnt it was replaced); [`Refusal::WrongRole`] unless a replica.
    pub fn accept_replicated(&mut self, from: &str, epoch: &Epoch) -> Result<(), Refusal> {
        self.not_older(epoch)?;
        if *epoch > self.epoch {
            self.observe(from, epoch);
        }
        match self.role {
            Role::Replica if self.owner.as_deref() == Some(from) => Ok(()),
            ref other => Err(Refusal::WrongRole(other.clone())),
        }
    }
}
