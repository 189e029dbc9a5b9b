//! Who may read `/metrics`: the bearer token is authenticated by a TokenReview and the user it
//! names is authorized by a SubjectAccessReview for the non-resource URL and verb (`get
//! /metrics`), as controller-runtime's `filters.WithAuthenticationAndAuthorization` does.
//! Granted by a ClusterRole rule `nonResourceURLs: ["/metrics"], verbs: ["get"]`
//! (`config/rbac/metrics_reader_role.yaml`).
//!
//! The decisions are pure functions of the review results ([`authenticated_user`],
//! [`authorization`]); [`Reviewer`] sends the reviews and keeps a small cache so that a scrape
//! every few seconds does not cost two API requests each time.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo},
    authorization::v1::{
        NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        SubjectAccessReviewStatus,
    },
};
use kube::{Api, Client, api::PostParams};
use sha2::{Digest, Sha256};

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// 200: the token's user may `verb` the path.
    Allow,
    /// 401: no token, or the API server does not accept it (the reason is logged, not sent).
    Unauthenticated(String),
    /// 403: a valid token whose user may not read the path.
    Forbidden { user: String, reason: String },
}

/// Why a review could not be made (500: neither allowed nor denied).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview failed: {0}")]
    TokenReview(#[source] kube::Error),
    #[error("SubjectAccessReview failed: {0}")]
    SubjectAccessReview(#[source] kube::Error),
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
}

/// The token of an `Authorization: Bearer <token>` header value; `None` for anything else.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user a TokenReview authenticated, or why the token is refused.
pub fn authenticated_user(status: Option<&TokenReviewStatus>) -> Result<UserInfo, Decision> {
    let Some(status) = status else {
        return Err(Decision::Unauthenticated(
            "the TokenReview came back without a status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("token not authenticated");
        return Err(Decision::Unauthenticated(why.into()));
    }
    match &status.user {
        Some(user) if user.username.as_deref().is_some_and(|u| !u.is_empty()) => Ok(user.clone()),
        _ => Err(Decision::Unauthenticated(
            "the TokenReview authenticated no user name".into(),
        )),
    }
}

/// The SubjectAccessReview asking whether `user` may `verb` the non-resource URL `path`.
pub fn access_review(user: &UserInfo, verb: &str, path: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.into()),
                verb: Some(verb.into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The decision for `user` from a SubjectAccessReview's status: allowed only when `allowed` is
/// true and `denied` is not.
pub fn authorization(user: &UserInfo, status: Option<&SubjectAccessReviewStatus>) -> Decision {
    let name = user.username.clone().unwrap_or_default();
    match status {
        Some(s) if s.allowed && s.denied != Some(true) => Decision::Allow,
        Some(s) => Decision::Forbidden {
            user: name,
            reason: s
                .reason
                .clone()
                .or_else(|| s.evaluation_error.clone())
                .unwrap_or_else(|| "no rule allows it".into()),
        },
        None => Decision::Forbidden {
            user: name,
            reason: "the SubjectAccessReview came back without a status".into(),
        },
    }
}

/// How long a decision is reused. Allowed: a minute (controller-runtime keeps authentication
/// for 1 min and allowed authorizations for 5; one minute bounds how long a revoked binding or
/// deleted token keeps working). Refusals: 10 s, so that a newly granted reader is not kept
/// out for long, while a flood of bad tokens still costs the API server little.
pub fn ttl(decision: &Decision) -> Duration {
    match decision {
        Decision::Allow => Duration::from_secs(60),
        Decision::Unauthenticated(_) | Decision::Forbidden { .. } => Duration::from_secs(10),
    }
}

/// How long after its last fresh review an allowed token is still let in while the API server
/// cannot be asked: metrics matter most when the API server is unreachable (a node cut off keeps
/// counting its failed publishes), and Prometheus, scraping every 30 s, always has a fresh
/// decision when the outage starts. A revoked reader keeps reading for as long during an outage.
pub const STALE_ALLOW: Duration = Duration::from_secs(600);

/// Decisions by (token digest, verb, path), each until its deadline; at most `capacity` entries.
/// Tokens are kept only as SHA-256 digests.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    entries: HashMap<[u8; 32], (Decision, Instant)>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            entries: HashMap::new(),
        }
    }

    pub fn key(token: &str, verb: &str, path: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [token, verb, path] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// The decision for `key` if it has not expired at `now`.
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        match self.entries.get(key) {
            Some((decision, deadline)) if now < *deadline => Some(decision.clone()),
            _ => None,
        }
    }

    /// The decision when the API server cannot be asked: `Allow` only for a key allowed by a
    /// review that went stale less than [`STALE_ALLOW`] ago; refusals are never reused.
    pub fn fallback(&self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        match self.entries.get(key) {
            Some((Decision::Allow, deadline)) if now < *deadline + STALE_ALLOW => {
                Some(Decision::Allow)
            }
            _ => None,
        }
    }

    /// Keeps `decision` for its [`ttl`] (an `Allow` stays [`STALE_ALLOW`] longer, for
    /// [`Cache::fallback`]). When full, entries past all use go first; if none is, everything
    /// goes (a flood of distinct tokens cannot grow memory).
    pub fn put(&mut self, key: [u8; 32], decision: Decision, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, (decision, deadline)| match decision {
                    Decision::Allow => now < *deadline + STALE_ALLOW,
                    _ => now < *deadline,
                });
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        let deadline = now + ttl(&decision);
        self.entries.insert(key, (decision, deadline));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Sends the reviews to the API server (with the process's own credentials, which need
/// `create` on `tokenreviews` and `subjectaccessreviews`).
pub struct Reviewer {
    client: Client,
    cache: Mutex<Cache>,
    timeout: Duration,
}

impl Reviewer {
    pub fn new(client: Client) -> Reviewer {
        Reviewer {
            client,
            cache: Mutex::new(Cache::new(1024)),
            timeout: Duration::from_secs(10),
        }
    }

    /// The decision for a request carrying `authorization` (the header value) to `verb path`.
    pub async fn decide(
        &self,
        authorization: Option<&str>,
        verb: &str,
        path: &str,
    ) -> Result<Decision, ReviewError> {
        let Some(token) = bearer_token(authorization) else {
            return Ok(Decision::Unauthenticated("no bearer token".into()));
        };
        let key = Cache::key(token, verb, path);
        if let Some(d) = self
            .cache
            .lock()
            .expect("cache lock")
            .get(&key, Instant::now())
        {
            return Ok(d);
        }
        let decision = match self.review(token, verb, path).await {
            Ok(decision) => decision,
            Err(e) => {
                let fallback = self
                    .cache
                    .lock()
                    .expect("cache lock")
                    .fallback(&key, Instant::now());
                return match fallback {
                    Some(d) => {
                        tracing::warn!(error = %e, "cannot review a metrics request; the token was allowed recently, serving it");
                        Ok(d)
                    }
                    None => Err(e),
                };
            }
        };
        self.cache
            .lock()
            .expect("cache lock")
            .put(key, decision.clone(), Instant::now());
        Ok(decision)
    }

    async fn review(&self, token: &str, verb: &str, path: &str) -> Result<Decision, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = tokio::time::timeout(
            self.timeout,
            reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| ReviewError::Timeout("TokenReview", self.timeout))?
        .map_err(ReviewError::TokenReview)?;
        let user = match authenticated_user(reviewed.status.as_ref()) {
            Ok(user) => user,
            Err(refused) => return Ok(refused),
        };
        let sars: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let sar = tokio::time::timeout(
            self.timeout,
            sars.create(&PostParams::default(), &access_review(&user, verb, path)),
        )
        .await
        .map_err(|_| ReviewError::Timeout("SubjectAccessReview", self.timeout))?
        .map_err(ReviewError::SubjectAccessReview)?;
        Ok(authorization(&user, sar.status.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            uid: Some("u-1".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        assert_eq!(bearer_token(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("Bearer")), None);
        assert_eq!(bearer_token(None), None);
    }

    #[test]
    fn a_token_is_accepted_only_when_the_review_authenticated_a_user() {
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(user("system:serviceaccount:ns:reader")),
            ..Default::default()
        };
        assert_eq!(
            authenticated_user(Some(&ok)).unwrap().username.as_deref(),
            Some("system:serviceaccount:ns:reader")
        );
        let refused = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..Default::default()
        };
        assert_eq!(
            authenticated_user(Some(&refused)),
            Err(Decision::Unauthenticated("token has expired".into()))
        );
        // authenticated unset, or no user name: refused, never allowed by default.
        let unset = TokenReviewStatus {
            user: Some(user("x")),
            ..Default::default()
        };
        assert!(matches!(
            authenticated_user(Some(&unset)),
            Err(Decision::Unauthenticated(_))
        ));
        let nameless = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo::default()),
            ..Default::default()
        };
        assert!(matches!(
            authenticated_user(Some(&nameless)),
            Err(Decision::Unauthenticated(_))
        ));
        assert!(matches!(
            authenticated_user(None),
            Err(Decision::Unauthenticated(_))
        ));
    }

    #[test]
    fn the_access_review_asks_for_the_users_identity_on_the_non_resource_url() {
        let sar = access_review(&user("alice"), "get", "/metrics");
        assert_eq!(sar.spec.user.as_deref(), Some("alice"));
        assert_eq!(sar.spec.uid.as_deref(), Some("u-1"));
        assert_eq!(
            sar.spec.groups,
            Some(vec!["system:serviceaccounts".to_string()])
        );
        let nr = sar.spec.non_resource_attributes.unwrap();
        assert_eq!(nr.path.as_deref(), Some("/metrics"));
        assert_eq!(nr.verb.as_deref(), Some("get"));
        assert!(sar.spec.resource_attributes.is_none());
    }

    #[test]
    fn only_an_allowed_and_not_denied_review_allows() {
        let u = user("bob");
        let allowed = SubjectAccessReviewStatus {
            allowed: true,
            ..Default::default()
        };
        assert_eq!(authorization(&u, Some(&allowed)), Decision::Allow);
        let denied = SubjectAccessReviewStatus {
            allowed: true,
            denied: Some(true),
            ..Default::default()
        };
        assert!(matches!(
            authorization(&u, Some(&denied)),
            Decision::Forbidden { .. }
        ));
        let not_allowed = SubjectAccessReviewStatus {
            allowed: false,
            reason: Some("no RBAC policy matched".into()),
            ..Default::default()
        };
        assert_eq!(
            authorization(&u, Some(&not_allowed)),
            Decision::Forbidden {
                user: "bob".into(),
                reason: "no RBAC policy matched".into()
            }
        );
        assert!(matches!(
            authorization(&u, None),
            Decision::Forbidden { .. }
        ));
    }

    #[test]
    fn decisions_expire_refusals_sooner_than_allowances() {
        let mut cache = Cache::new(8);
        let t0 = Instant::now();
        let allow = Cache::key("t1", "get", "/metrics");
        let deny = Cache::key("t2", "get", "/metrics");
        cache.put(allow, Decision::Allow, t0);
        cache.put(
            deny,
            Decision::Forbidden {
                user: "u".into(),
                reason: "r".into(),
            },
            t0,
        );
        let t11 = t0 + Duration::from_secs(11);
        assert_eq!(cache.get(&allow, t11), Some(Decision::Allow));
        assert_eq!(cache.get(&deny, t11), None);
        assert_eq!(cache.get(&allow, t0 + Duration::from_secs(61)), None);
        // The key binds the token to the verb and path.
        assert_ne!(allow, Cache::key("t1", "get", "/other"));
        assert_ne!(Cache::key("ab", "c", "/m"), Cache::key("a", "bc", "/m"));
    }

    #[test]
    fn only_a_recent_allowance_outlives_an_unreachable_api_server() {
        let mut cache = Cache::new(8);
        let t0 = Instant::now();
        let allowed = Cache::key("reader", "get", "/metrics");
        let refused = Cache::key("nobody", "get", "/metrics");
        let unknown = Cache::key("new", "get", "/metrics");
        cache.put(allowed, Decision::Allow, t0);
        cache.put(
            refused,
            Decision::Forbidden {
                user: "u".into(),
                reason: "r".into(),
            },
            t0,
        );
        let later = t0 + Duration::from_secs(300);
        assert_eq!(cache.get(&allowed, later), None, "not fresh any more");
        assert_eq!(cache.fallback(&allowed, later), Some(Decision::Allow));
        assert_eq!(cache.fallback(&refused, t0), None);
        assert_eq!(cache.fallback(&unknown, t0), None);
        let too_late = t0 + ttl(&Decision::Allow) + STALE_ALLOW;
        assert_eq!(cache.fallback(&allowed, too_late), None);
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let mut cache = Cache::new(4);
        let t0 = Instant::now();
        for i in 0..100 {
            cache.put(
                Cache::key(&format!("t{i}"), "get", "/metrics"),
                Decision::Unauthenticated("bad".into()),
                t0,
            );
            assert!(cache.len() <= 4, "{} entries", cache.len());
        }
    }
}
