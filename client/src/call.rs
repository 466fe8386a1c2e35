//! The one retry loop every RPC goes through: pick a node, send, and on
//! failure follow the leader, move on, or give up, within one deadline.

use std::future::Future;
use std::time::Duration;

use keel_proto::client::keel_client::KeelClient;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::backoff::Backoff;
use crate::error::{Failure, LeaderHint, classify};
use crate::nodes::Route;
use crate::{Client, Error, Result};

/// Safety bound on attempts of one call; the deadline normally ends it first
/// (at 500 ms per pause, a 30 s deadline allows about 70).
const MAX_ATTEMPTS: u32 = 1_000;
/// A NOT_LEADER naming a leader is followed at once this many times in a
/// row; past that (nodes pointing at each other during an election) the
/// call pauses like any other retry.
const REDIRECTS_WITHOUT_PAUSE: u32 = 2;

/// How one call is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallSpec {
    pub route: Route,
    /// The call changes state: an attempt that may have been applied turns
    /// a timeout into `OutcomeUnknown` instead of `Unavailable`.
    pub write: bool,
    /// Added to the per-attempt timeout (a fetch's long-poll wait).
    pub extra_wait: Duration,
    /// Overall deadline of the call, across all attempts.
    pub timeout: Duration,
}

impl Client {
    pub(crate) fn spec(&self, route: Route, write: bool) -> CallSpec {
        CallSpec { route, write, extra_wait: Duration::ZERO, timeout: self.inner.options.call_timeout }
    }

    /// Sends `request` until a node answers it, a node refuses it for good,
    /// or `spec.timeout` passes.
    pub(crate) async fn call<Req, Resp, F, Fut>(&self, spec: CallSpec, request: Req, send: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(KeelClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let options = &self.inner.options;
        let deadline = Instant::now() + spec.timeout;
        let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
        let mut attempts: u32 = 0;
        let mut maybe_applied = false;
        let mut last = String::from("no attempt was made before the deadline");
        let mut redirects: u32 = 0;
        let mut index = self.lock_nodes().pick(spec.route);
        while attempts < MAX_ATTEMPTS {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break;
            };
            attempts += 1;
            let node = self.lock_nodes().get(index);
            let budget = left.min(options.request_timeout.saturating_add(spec.extra_wait));
            let mut req = Request::new(request.clone());
            // The node may give up when we do, instead of working for nobody.
            req.set_timeout(budget);
            if let Some(authorization) = &self.inner.authorization {
                req.metadata_mut().insert("authorization", authorization.clone());
            }
            let failure = match tokio::time::timeout(budget, send(node.client(), req)).await {
                Ok(Ok(response)) => {
                    self.lock_nodes().succeeded(spec.route, index);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => classify(&status),
                Err(_) => Failure::Retry {
                    maybe_applied: true,
                    same_node: false,
                    why: format!("no answer within {} ms", budget.as_millis()),
                },
            };
            let pause = match failure {
                // A refusal of a later attempt says nothing of an earlier one
                // that may have been stored (e.g. a new leader that has not
                // applied the topic yet, or a sequence it can no longer
                // check): the write's fate is unknown, not refused.
                Failure::Fatal(e) if spec.write && maybe_applied => {
                    return Err(Error::OutcomeUnknown { attempts, last: e.to_string() });
                }
                Failure::Fatal(e) => return Err(e),
                Failure::NotLeader { leader, why } => {
                    last = format!("{}: {why}", node.addr);
                    match leader.and_then(|hint| self.follow(hint)) {
                        Some(leader) => {
                            redirects += 1;
                            index = leader;
                            redirects > REDIRECTS_WITHOUT_PAUSE
                        }
                        None => {
                            redirects = 0;
                            index = self.lock_nodes().failed(spec.route, index);
                            true
                        }
                    }
                }
                Failure::Retry { maybe_applied: applied, same_node, why } => {
                    maybe_applied |= applied;
                    last = format!("{}: {why}", node.addr);
                    redirects = 0;
                    if !same_node {
                        index = self.lock_nodes().failed(spec.route, index);
                    }
                    true
                }
            };
            debug!(attempt = attempts, last = %last, "keel call retrying");
            if pause {
                let wait = backoff.next_delay().min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
        }
        if spec.write && maybe_applied {
            Err(Error::OutcomeUnknown { attempts, last })
        } else {
            Err(Error::Unavailable { attempts, last })
        }
    }

    /// Records the leader a node named; `None` when its address is unusable.
    pub(crate) fn follow(&self, hint: LeaderHint) -> Option<usize> {
        let mut nodes = self.lock_nodes();
        match nodes.find_or_add(&hint.addr, &self.inner.options) {
            Ok(index) => {
                nodes.set_leader(index);
                Some(index)
            }
            Err(e) => {
                debug!(leader = %hint.addr, error = %e, "ignoring a leader hint");
                None
            }
        }
    }
}
