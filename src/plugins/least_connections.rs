//! `least_connections`: order the candidates by in-flight requests relative
//! to weight (ties rotate), healthy providers with room first.

use crate::error::WeirError;
use crate::pipeline::{Phases, Plugin, RequestCtx, Typed};
use crate::traffic::least_conn::{order, Load};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Plugin settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeastConnectionsConf {}

/// The `least_connections` plugin type.
pub static TYPE: Typed<LeastConnectionsConf> = Typed {
    name: "least_connections",
    check: crate::pipeline::no_check,
    files: crate::pipeline::no_files,
    build: |_, _| Ok(std::sync::Arc::new(LeastConnections::default())),
};

/// See the module doc.
#[derive(Default)]
pub struct LeastConnections {
    rotation: AtomicUsize,
}

#[async_trait]
impl Plugin for LeastConnections {
    fn phases(&self) -> Phases {
        Phases::NONE
    }

    fn upstream_choice(&self, ctx: &mut RequestCtx) -> Result<(), WeirError> {
        if ctx.candidates.len() < 2 {
            return Ok(());
        }
        let loads: Vec<Load> = ctx
            .candidates
            .iter()
            .map(|p| Load {
                in_flight: p.in_flight_now(),
                weight: p.conf.weight,
                available: p.is_healthy() && p.bulkhead.has_room(),
            })
            .collect();
        let rot = self.rotation.fetch_add(1, Ordering::Relaxed);
        let idx = order(&loads, rot);
        let ordered = idx.iter().map(|&i| ctx.candidates[i].clone()).collect();
        ctx.candidates = ordered;
        Ok(())
    }
}
