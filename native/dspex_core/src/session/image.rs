//! A session's whole state as plain data, for snapshots: taken at an entry, then the entries
//! after it, it rebuilds the session.

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Fence, Session, Variable};
use crate::graph::{DependencyGraph, GraphError, GraphSnapshot};
use crate::snapshot::{decode_frame, try_encode_frame, FrameKind};
use crate::{Error, Result};

/// Everything a [`Session`] holds, as of entry `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionImage<K, H> {
    /// The last entry the image includes.
    pub seq: u64,
    /// Every variable.
    pub variables: Vec<(K, Variable<K>)>,
    /// The dependency graph.
    pub graph: GraphSnapshot<K>,
    /// Every fence (an expired one included: it is harmless and goes on the next write).
    pub fences: Vec<(K, Fence<H>)>,
    /// The newest token granted per variable.
    pub tokens: Vec<(K, u64)>,
}

impl<K: Eq + Hash + Clone, H: Clone + Eq> Session<K, H> {
    /// The session's state as plain data.
    pub fn image(&self) -> SessionImage<K, H> {
        SessionImage {
            seq: self.seq,
            variables: self
                .variables
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            graph: self.graph.snapshot(),
            fences: self
                .fences
                .iter()
                .map(|(k, f)| (k.clone(), f.clone()))
                .collect(),
            tokens: self.tokens.iter().map(|(k, t)| (k.clone(), *t)).collect(),
        }
    }

    /// Rebuilds a session from an image, checking that its graph and variables agree.
    ///
    /// # Errors
    /// [`Error::Payload`] when the graph has a cycle or a repeated node, or when the
    /// variables and the graph's nodes differ.
    pub fn from_image(image: SessionImage<K, H>) -> Result<Self>
    where
        K: std::fmt::Debug,
    {
        let graph = DependencyGraph::restore(&image.graph).map_err(|e| match e {
            GraphError::Cycle(_) => Error::Payload("the image's graph has a cycle".into()),
            other => Error::Payload(format!("the image's graph is invalid: {other}")),
        })?;
        let count = image.variables.len();
        let variables: ahash::AHashMap<_, _> = image.variables.into_iter().collect();
        if variables.len() != count
            || graph.node_count() != count
            || variables.keys().any(|k| !graph.contains(k))
        {
            return Err(Error::Payload(
                "the image's variables and graph nodes differ".into(),
            ));
        }
        Ok(Self {
            seq: image.seq,
            variables,
            graph,
            fences: image.fences.into_iter().collect(),
            tokens: image.tokens.into_iter().collect(),
        })
    }
}

impl<K: Serialize + DeserializeOwned, H: Serialize + DeserializeOwned> SessionImage<K, H> {
    /// The image in a checked frame ([`FrameKind::SessionImage`]).
    ///
    /// # Errors
    /// [`Error::Payload`] when it does not serialize; [`Error::PayloadTooLarge`].
    pub fn to_frame(&self) -> Result<Vec<u8>> {
        let payload = postcard::to_stdvec(self).map_err(|e| Error::Payload(e.to_string()))?;
        try_encode_frame(FrameKind::SessionImage, &payload)
    }

    /// Decodes a frame written by [`to_frame`](Self::to_frame).
    ///
    /// # Errors
    /// The frame's own errors, [`Error::WrongKind`], or [`Error::Payload`].
    pub fn from_frame(bytes: &[u8]) -> Result<Self> {
        let frame = decode_frame(bytes)?;
        if frame.kind != FrameKind::SessionImage {
            return Err(Error::WrongKind {
                expected: FrameKind::SessionImage as u8,
                found: frame.kind as u8,
            });
        }
        postcard::from_bytes(frame.payload).map_err(|e| Error::Payload(e.to_string()))
    }
}
