//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator replicas are safe: only the
//! holder reconciles. The decision is pure ([`decide`]); [`Elector`] reads and writes the Lease with
//! optimistic concurrency (a conflicting write loses and retries).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// What to do with the Lease as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder's lease expired: take it over.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Wait,
}

/// Decides from the Lease's spec (None when the Lease does not exist).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(h) if h == me => Decision::Renew,
        Some(_) => {
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(t) if t + duration > now => Decision::Wait,
                _ => Decision::Acquire,
            }
        }
    }
}

/// Holds or competes for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration,
        }
    }

    /// Tries once to acquire or renew; true when we hold the Lease afterwards.
    pub async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        if decision == Decision::Wait {
            return Ok(false);
        }
        let mut spec = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        if decision == Decision::Acquire {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds =
            Some(i32::try_from(self.lease_duration.as_secs()).unwrap_or(15));
        let result = match current {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => Ok(true),
            // Somebody else wrote first (409 on replace or create): not ours this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until we hold the Lease (polling every `retry`), or until `stop` turns true.
    pub async fn acquire(
        &self,
        retry: Duration,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        loop {
            if *stop.borrow() {
                return false;
            }
            match tokio::time::timeout(self.lease_duration / 3, self.try_hold()).await {
                Ok(Ok(true)) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return true;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(error = %e, "leader election: reading the Lease failed"),
                Err(_) => warn!(lease = %self.name, "leader election: reading the Lease timed out"),
            }
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renews every `every` until a renewal fails for longer than the lease duration (returns then: we may
    /// no longer be the leader) or `stop` turns true.
    pub async fn keep(&self, every: Duration, stop: &tokio::sync::watch::Receiver<bool>) -> bool {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return true;
            }
            // A renewal that hangs (an apiserver starting up accepts connections long before it answers)
            // counts as failed once the next one is due, so the deadline below still holds.
            match tokio::time::timeout(every, self.try_hold()).await {
                Ok(Ok(true)) => last_ok = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    warn!(lease = %self.name, "lost leadership to another replica");
                    return false;
                }
                Ok(Err(e)) => warn!(error = %e, "leader election: renewing the Lease failed"),
                Err(_) => {
                    warn!(lease = %self.name, "leader election: renewing the Lease timed out")
                }
            }
            // Stop before the lease could expire, so two leaders never overlap.
            if last_ok.elapsed() + every >= self.lease_duration {
                warn!(lease = %self.name, "could not renew the Lease in time: giving up leadership");
                return false;
            }
        }
    }

    /// Gives the Lease up (so another replica takes over at once); best effort.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            warn!(error = %e, "releasing the Lease failed");
        } else {
            info!(lease = %self.name, "released leadership");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_or_unheld_lease_is_acquired() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&lease(None, 0, now)), "a", now),
            Decision::Acquire
        );
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        let now = Timestamp::now();
        assert_eq!(
            decide(Some(&lease(Some("a"), 100, now)), "a", now),
            Decision::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected() {
        let now = Timestamp::now();
        assert_eq!(
            decide(Some(&lease(Some("b"), 5, now)), "a", now),
            Decision::Wait
        );
    }

    #[test]
    fn an_expired_lease_of_another_replica_is_taken_over() {
        let now = Timestamp::now();
        assert_eq!(
            decide(Some(&lease(Some("b"), 16, now)), "a", now),
            Decision::Acquire
        );
    }
}
