//! The shard sync: the leases of new shards created (parents before children) and finished
//! ones deleted, for one stream or the streams a tracker lists.

use super::*;

/// Which streams the shard sync keeps leases for.
pub(super) enum SyncedStreams {
    /// The configured stream (`SchedulerConfig::stream_name`); its lease keys are shard ids.
    Single,
    /// The streams a tracker lists, with multi-stream lease keys. The loop also tells the
    /// scheduler which streams disappeared, and deletes the leases of former streams after the
    /// clean-up delay.
    Tracked {
        tracker: Arc<dyn StreamTracker>,
        /// The identifiers of the streams tracked now (the coordinator's take filter reads it).
        tracked: Arc<std::sync::RwLock<BTreeSet<String>>>,
        removed: tokio::sync::mpsc::Sender<BTreeSet<String>>,
    },
}

/// One stream to synchronise this round.
pub(super) struct SyncTarget {
    name: String,
    /// Multi-stream: its identity (lease keys and fatal errors are per identifier).
    id: Option<StreamIdentifier>,
    initial: InitialPosition,
    /// Whether its identifier was given (not looked up, so never looked up again).
    given_id: bool,
}

/// The shard sync, for one stream or many: creates the leases of new shards (parents before
/// children) on the leader every `shard_sync_interval` and on any worker whose shard ended,
/// and deletes finished leases.
pub(super) struct ShardSync {
    pub(super) backend: Arc<dyn StreamBackend>,
    pub(super) store: Arc<dyn LeaseStore>,
    pub(super) config: Arc<SchedulerConfig>,
    pub(super) shard_ended: Arc<Notify>,
    pub(super) coordinator: Arc<LeaseCoordinator>,
    /// A stream that failed for good is no longer synchronised (nor, in multi-stream mode,
    /// tracked).
    pub(super) fatal: FatalSignal,
    pub(super) streams: SyncedStreams,
}

impl ShardSync {
    pub(super) async fn run(self) {
        // Multi-stream: stream name to identifier, looked up once per stream.
        let mut identifiers: HashMap<String, StreamIdentifier> = HashMap::new();
        // Multi-stream: former streams (with leases in the table) and when this worker first
        // saw them missing.
        let mut missing_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut first = true;
        let mut ended = false;
        // Every shard of a stream closed, some lease not finished yet (a DynamoDB stream being
        // disabled): every worker syncs each round until the stream is drained, so that each
        // one finds the end, not only the leader.
        let mut draining = false;
        loop {
            let Some((targets, now_tracked)) = self.targets(&mut identifiers).await else {
                return;
            };
            if first {
                // The leader is known once the heartbeats were read once.
                self.coordinator
                    .wait_ready(self.config.leases.failover_time)
                    .await;
            }
            // Syncs after a shard of this worker ended run here; the periodic one (the first
            // one included) only on the leader (one worker of the fleet), so that the fleet
            // lists the table and creates leases once per interval, not once per worker.
            let due = ended || draining || self.coordinator.is_leader();
            let listed = if due {
                Some(self.store.list_eventually_consistent().await)
            } else {
                None
            };
            match listed {
                None => {}
                Some(Ok(leases)) => {
                    let mut created = 0;
                    draining = false;
                    for target in &targets {
                        match self.sync_one(target, &leases, &mut identifiers).await {
                            Some((n, d)) => {
                                created += n;
                                draining |= d;
                            }
                            None => return,
                        }
                    }
                    if created > 0 {
                        // The others read the table on the announcement; this worker now.
                        self.coordinator.announce();
                        self.coordinator.wake();
                    }
                    if self.config.delete_finished_leases {
                        delete_finished_leases(&*self.store, &leases).await;
                    }
                    if let Some(tracked) = &now_tracked {
                        self.clean_up(&leases, tracked, &mut missing_since).await;
                    }
                }
                Some(Err(e)) => warn!(error = %e, "listing leases for shard sync failed"),
            }
            first = false;
            ended = tokio::select! {
                () = tokio::time::sleep(self.config.shard_sync_interval) => false,
                () = self.shard_ended.notified() => {
                    self.coordinator.wake();
                    true
                }
            };
        }
    }

    /// The streams to synchronise this round (and, multi-stream, the identifiers tracked
    /// now, after telling the scheduler which ones disappeared); `None` when the scheduler is
    /// gone.
    async fn targets(
        &self,
        identifiers: &mut HashMap<String, StreamIdentifier>,
    ) -> Option<(Vec<SyncTarget>, Option<BTreeSet<String>>)> {
        let SyncedStreams::Tracked { tracked, removed, .. } = &self.streams else {
            let single = SyncTarget {
                name: self.config.stream_name.clone(),
                id: None,
                initial: self.config.initial_position,
                given_id: false,
            };
            return Some((vec![single], None));
        };
        let failed = self.fatal.failed_streams();
        let mut streams = self.resolve(identifiers).await;
        streams.retain(|(_, id)| !failed.contains(&id.to_string()));
        let now_tracked: BTreeSet<String> = streams.iter().map(|(_, id)| id.to_string()).collect();
        let before = std::mem::replace(
            &mut *tracked.write().unwrap_or_else(std::sync::PoisonError::into_inner),
            now_tracked.clone(),
        );
        let gone: BTreeSet<String> = before.difference(&now_tracked).cloned().collect();
        if !gone.is_empty() {
            info!(removed = ?gone, "streams no longer tracked");
            removed.send(gone).await.ok()?;
        }
        let targets = streams
            .into_iter()
            .map(|(stream, id)| SyncTarget {
                initial: stream.initial_position.unwrap_or(self.config.initial_position),
                given_id: stream.identifier.is_some(),
                name: stream.name,
                id: Some(id),
            })
            .collect();
        Some((targets, Some(now_tracked)))
    }

    /// Creates the leases of one stream's new shards; returns how many and whether the stream
    /// is draining (every shard closed, some lease unfinished), or `None` when the (single)
    /// stream failed for good and the sync stops. A drained stream (every shard closed and
    /// read to its end) is asked whether it ended for good (a disabled DynamoDB stream: fatal).
    async fn sync_one(
        &self,
        target: &SyncTarget,
        leases: &[kcl_lease::Lease],
        identifiers: &mut HashMap<String, StreamIdentifier>,
    ) -> Option<(usize, bool)> {
        let result = sync_stream_drain(
            &*self.backend,
            &*self.store,
            leases,
            &target.name,
            target.id.as_ref(),
            target.initial,
        )
        .await;
        let e = match result {
            Ok((n, Drain::Open)) => return Some((n, false)),
            Ok((n, Drain::Draining)) => return Some((n, true)),
            Ok((n, Drain::Drained)) => match self.backend.check_stream_ended(&target.name).await {
                Ok(()) => return Some((n, false)),
                Err(e) => KclError::Backend(e),
            },
            Err(e) => e,
        };
        match (&target.id, e) {
            (None, KclError::Backend(e)) if self.fatal.check_stream(&target.name, false, &e) => return None,
            (Some(id), KclError::Backend(e @ BackendError::StreamNotFound(_))) => {
                // This incarnation of the stream is gone for good; a recreated stream gets a
                // new identifier: look it up again.
                self.fatal.check_stream(&id.to_string(), true, &e);
                if !target.given_id {
                    identifiers.remove(&target.name);
                }
            }
            (Some(id), KclError::Backend(e)) if self.fatal.check_stream(&id.to_string(), true, &e) => {}
            (_, e) => {
                warn!(stream = %target.name, error = %e, "shard sync failed");
                self.coordinator
                    .journal()
                    .error(None, format_args!("shard sync of {} failed: {e}", target.name));
            }
        }
        Some((0, false))
    }

    /// The tracked streams with their identifiers. A stream whose identifier cannot be looked
    /// up now keeps the one it had, so that a transient failure does not look like a removal.
    async fn resolve(
        &self,
        identifiers: &mut HashMap<String, StreamIdentifier>,
    ) -> Vec<(StreamConfig, StreamIdentifier)> {
        let mut out = Vec::new();
        let SyncedStreams::Tracked { tracker, .. } = &self.streams else {
            return Vec::new();
        };
        for stream in tracker.streams().await {
            if let Some(arn) = &stream.arn {
                self.backend.name_by_arn(arn);
            }
            let id = match stream
                .identifier
                .clone()
                .or_else(|| identifiers.get(&stream.name).cloned())
            {
                Some(id) => id,
                None => match self.backend.stream_identifier(&stream.name).await {
                    Ok(id) => {
                        // A stream named by ARN belongs to the ARN's account, whatever the
                        // backend answers (the local backend has one account).
                        let id = match &stream.arn {
                            Some(arn) => arn.identifier(id.creation_epoch),
                            None => id,
                        };
                        info!(stream = %stream.name, identifier = %id, "tracking stream");
                        identifiers.insert(stream.name.clone(), id.clone());
                        id
                    }
                    Err(e) => {
                        warn!(stream = %stream.name, error = %e, "describing a tracked stream failed; retrying at the next sync");
                        continue;
                    }
                },
            };
            out.push((stream, id));
        }
        out
    }

    /// Deletes the leases of streams that have been missing for the clean-up delay.
    async fn clean_up(
        &self,
        leases: &[kcl_lease::Lease],
        tracked: &BTreeSet<String>,
        missing_since: &mut HashMap<String, tokio::time::Instant>,
    ) {
        let FormerStreamsCleanup::After(delay) = self.config.former_streams_cleanup else {
            return;
        };
        let now = tokio::time::Instant::now();
        let former: BTreeSet<String> = leases
            .iter()
            .filter_map(|l| l.stream().map(|s| s.to_string()))
            .filter(|s| !tracked.contains(s))
            .collect();
        missing_since.retain(|s, _| former.contains(s));
        for stream in &former {
            missing_since.entry(stream.clone()).or_insert(now);
        }
        let mut deleted = 0;
        for lease in leases {
            let Some(stream) = lease.stream().map(|s| s.to_string()) else {
                continue;
            };
            if missing_since
                .get(&stream)
                .is_none_or(|t| now.duration_since(*t) < delay)
            {
                continue;
            }
            match self.store.delete(lease).await {
                Ok(()) => deleted += 1,
                // Still renewed by a worker that is stopping it: next round.
                Err(LeaseError::Conflict { .. } | LeaseError::NotFound(_)) => {}
                Err(e) => {
                    warn!(lease = %lease.lease_key, error = %e, "deleting the lease of a former stream failed")
                }
            }
        }
        if deleted > 0 {
            info!(deleted, "deleted the leases of streams no longer tracked");
        }
    }
}
