//! Reload triggers: SIGHUP, and a change of the config file or any file it
//! names (keys files, wasm modules, CA files), debounced. `POST /reload` on the
//! admin API is the third trigger. Each reload builds a whole new generation
//! beside the old one (`Gateway::reload`); a failed one changes nothing.

use crate::runtime::{file_stamps, FileStamps, Gateway};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often files are checked, and how long they must stay unchanged
/// before a reload (editors write in several steps).
const POLL: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_millis(300);

/// The background service.
pub struct Reloader {
    pub gateway: Arc<Gateway>,
}

async fn reload(gateway: &Arc<Gateway>, why: &str) {
    log::info!("reloading config ({why})");
    let gw = gateway.clone();
    // Building a generation is blocking work (files, DNS, wasm compilation).
    let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        // Reload when the files differ from what was last loaded and have
        // stayed the same for SETTLE (editors write in several steps).
        let mut pending: Option<(FileStamps, std::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    reload(&self.gateway, "SIGHUP").await;
                    pending = None;
                }
                _ = tokio::time::sleep(POLL) => {
                    let now = file_stamps(&self.gateway.current().watched_files());
                    if now == self.gateway.loaded_stamps() {
                        pending = None;
                        continue;
                    }
                    match &pending {
                        Some((seen, since)) if *seen == now => {
                            if since.elapsed() >= SETTLE {
                                pending = None;
                                reload(&self.gateway, "a watched file changed").await;
                            }
                        }
                        _ => pending = Some((now, std::time::Instant::now())),
                    }
                }
            }
        }
    }
}
