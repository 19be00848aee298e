//! Pub/Sub's admin REST API: topics, subscriptions and their IAM policies,
//! in the shapes the API documents, each call retried as Google's own
//! clients retry it. Provisioning decides what to ask for; this says it.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CallError;
use super::duration::Seconds;
use super::rest::{Ignored, NO_BODY, Rest, Retry, not_found_is_none};

/// Results per page of a list (Pub/Sub's maximum).
const PAGE_SIZE: &str = "1000";
/// The policy version that carries conditional bindings: asked for, so none is lost.
const POLICY_VERSION: &str = "3";

/// `projects/{p}/topics/{id}`.
pub(crate) fn topic_name(project: &str, id: &str) -> String {
    format!("projects/{project}/topics/{id}")
}

/// `projects/{p}/subscriptions/{id}`.
pub(crate) fn subscription_name(project: &str, id: &str) -> String {
    format!("projects/{project}/subscriptions/{id}")
}

/// The Pub/Sub service agent of project `number`, as an IAM member: it
/// pushes, and republishes to dead-letter topics.
pub(crate) fn service_agent(number: &str) -> String {
    format!("serviceAccount:service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com")
}

/// A subscription's settings, as far as provisioning manages them. Fields
/// left out here (retention, filters, labels, ...) are neither sent nor compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Subscription {
    /// `projects/{p}/topics/{t}`; `_deleted-topic_` once the topic is gone.
    #[serde(default)]
    pub(crate) topic: String,
    /// Empty for a pull subscription.
    #[serde(default)]
    pub(crate) push_config: PushConfig,
    #[serde(default)]
    pub(crate) ack_deadline_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_policy: Option<RetryPolicy>,
    /// `{}` never expires; absent, Pub/Sub's default of 31 days without activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expiration_policy: Option<ExpirationPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dead_letter_policy: Option<DeadLetterPolicy>,
}

/// Where and how a push subscription pushes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PushConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) push_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) oidc_token: Option<OidcToken>,
}

/// The token Pub/Sub signs each push with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OidcToken {
    #[serde(default)]
    pub(crate) service_account_email: String,
    #[serde(default)]
    pub(crate) audience: String,
}

/// The backoff between redeliveries of a message that was not acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RetryPolicy {
    /// Pub/Sub's default, when it is left out, is 10 s.
    #[serde(default = "ten_seconds")]
    pub(crate) minimum_backoff: Seconds,
    /// Pub/Sub's default, when it is left out, is 600 s.
    #[serde(default = "six_hundred_seconds")]
    pub(crate) maximum_backoff: Seconds,
}

fn ten_seconds() -> Seconds {
    Seconds::from_secs(10)
}

fn six_hundred_seconds() -> Seconds {
    Seconds::from_secs(600)
}

/// When an idle subscription is deleted; no ttl: never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct ExpirationPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ttl: Option<Seconds>,
}

/// Where a message goes after too many deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeadLetterPolicy {
    #[serde(default)]
    pub(crate) dead_letter_topic: String,
    #[serde(default)]
    pub(crate) max_delivery_attempts: u32,
}

/// An IAM policy. Whatever else it holds (conditions, audit configs, a
/// version) is kept as it came, so a binding added here drops nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub(crate) struct Policy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) bindings: Vec<Binding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) etag: Option<String>,
    #[serde(flatten)]
    pub(crate) rest: BTreeMap<String, Value>,
}

/// A role and who has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Binding {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) members: Vec<String>,
    #[serde(flatten)]
    pub(crate) rest: BTreeMap<String, Value>,
}

impl Policy {
    /// Whether `member` has `role` unconditionally.
    pub(crate) fn grants(&self, role: &str, member: &str) -> bool {
        self.bindings.iter().any(|binding| {
            binding.role == role
                && !binding.rest.contains_key("condition")
                && binding.members.iter().any(|m| m == member)
        })
    }

    /// Gives `member` `role`, in the unconditional binding of that role if there is one.
    pub(crate) fn grant(&mut self, role: &str, member: &str) {
        if self.grants(role, member) {
            return;
        }
        match self.bindings.iter_mut().find(|binding| binding.role == role && !binding.rest.contains_key("condition")) {
            Some(binding) => binding.members.push(member.to_owned()),
            None => self.bindings.push(Binding {
                role: role.to_owned(),
                members: vec![member.to_owned()],
                rest: BTreeMap::new(),
            }),
        }
    }
}

/// A page of a list, its items read only by name until they are ours: a
/// subscription of someone else's in an unexpected shape must not stop us.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    /// `topics` or `subscriptions`, whichever was listed.
    #[serde(default, alias = "topics", alias = "subscriptions")]
    items: Vec<Value>,
    #[serde(default)]
    next_page_token: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateSubscription<'a> {
    subscription: &'a Subscription,
    update_mask: String,
}

#[derive(Serialize)]
struct SetPolicy<'a> {
    policy: &'a Policy,
}

/// Pub/Sub's admin API in one project.
#[derive(Debug, Clone)]
pub(crate) struct PubSubAdmin {
    rest: Rest,
    project: String,
}

impl PubSubAdmin {
    pub(crate) fn new(rest: Rest, project: String) -> Self {
        Self { rest, project }
    }

    fn topic_name(&self, id: &str) -> String {
        topic_name(&self.project, id)
    }

    fn subscription_name(&self, id: &str) -> String {
        subscription_name(&self.project, id)
    }

    /// The ids of the project's topics that start with `prefix`.
    pub(crate) async fn topics(&self, prefix: &str) -> Result<Vec<String>, CallError> {
        let named = self.list("topics", prefix).await?;
        Ok(named.into_iter().map(|(id, _)| id).collect())
    }

    /// The project's subscriptions whose ids start with `prefix`, by id.
    pub(crate) async fn subscriptions(&self, prefix: &str) -> Result<BTreeMap<String, Subscription>, CallError> {
        let named = self.list("subscriptions", prefix).await?;
        named
            .into_iter()
            .map(|(id, item)| match serde_json::from_value(item) {
                Ok(subscription) => Ok((id, subscription)),
                Err(error) => Err(CallError::Transport(format!("subscription {id} is not as documented: {error}"))),
            })
            .collect()
    }

    /// Every item of `collection` whose id starts with `prefix`, page by page.
    async fn list(&self, collection: &str, prefix: &str) -> Result<Vec<(String, Value)>, CallError> {
        let path = format!("projects/{}/{collection}", self.project);
        let start = format!("{path}/");
        let mut found = Vec::new();
        let mut token = String::new();
        loop {
            let query = [("pageSize", PAGE_SIZE), ("pageToken", token.as_str())];
            let page: Page = self.rest.call_with_query(Method::GET, &path, &query, NO_BODY, Retry::Read).await?;
            for item in page.items {
                let id = item["name"].as_str().and_then(|name| name.strip_prefix(&start));
                if let Some(id) = id.filter(|id| id.starts_with(prefix)) {
                    found.push((id.to_owned(), item.clone()));
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(found);
            }
            token = page.next_page_token;
        }
    }

    /// Creates topic `id`; `Err` with ALREADY_EXISTS if it is there.
    pub(crate) async fn create_topic(&self, id: &str) -> Result<(), CallError> {
        let path = self.topic_name(id);
        let _: Ignored = self.rest.call(Method::PUT, &path, Some(&serde_json::json!({})), Retry::Unavailable).await?;
        Ok(())
    }

    pub(crate) async fn delete_topic(&self, id: &str) -> Result<(), CallError> {
        let _: Ignored = self.rest.call(Method::DELETE, &self.topic_name(id), NO_BODY, Retry::Unavailable).await?;
        Ok(())
    }

    /// Subscription `id`, or `None` when there is none.
    pub(crate) async fn subscription(&self, id: &str) -> Result<Option<Subscription>, CallError> {
        let found = self.rest.call(Method::GET, &self.subscription_name(id), NO_BODY, Retry::Read).await;
        not_found_is_none(found)
    }

    /// Creates subscription `id`; `Err` with ALREADY_EXISTS if it is there.
    pub(crate) async fn create_subscription(&self, id: &str, subscription: &Subscription) -> Result<(), CallError> {
        let path = self.subscription_name(id);
        let _: Ignored = self.rest.call(Method::PUT, &path, Some(subscription), Retry::Read).await?;
        Ok(())
    }

    /// Sets the `fields` (camelCase names) of subscription `id` to those of `subscription`.
    pub(crate) async fn update_subscription(
        &self,
        id: &str,
        subscription: &Subscription,
        fields: &[&str],
    ) -> Result<(), CallError> {
        let body = UpdateSubscription { subscription, update_mask: fields.join(",") };
        let path = self.subscription_name(id);
        let _: Ignored = self.rest.call(Method::PATCH, &path, Some(&body), Retry::Unavailable).await?;
        Ok(())
    }

    pub(crate) async fn delete_subscription(&self, id: &str) -> Result<(), CallError> {
        let path = self.subscription_name(id);
        let _: Ignored = self.rest.call(Method::DELETE, &path, NO_BODY, Retry::Unavailable).await?;
        Ok(())
    }

    /// The IAM policy of `resource` (a full topic or subscription name), at
    /// version 3: a policy with conditional bindings comes whole.
    pub(crate) async fn policy(&self, resource: &str) -> Result<Policy, CallError> {
        let path = format!("{resource}:getIamPolicy");
        let query = [("options.requestedPolicyVersion", POLICY_VERSION)];
        self.rest.call_with_query(Method::GET, &path, &query, NO_BODY, Retry::Read).await
    }

    /// Replaces the policy of `resource`, at version 3; ABORTED when its etag
    /// is no longer current.
    pub(crate) async fn set_policy(&self, resource: &str, policy: &Policy) -> Result<Policy, CallError> {
        let mut policy = policy.clone();
        policy.rest.insert("version".to_owned(), Value::from(3));
        let path = format!("{resource}:setIamPolicy");
        self.rest.call(Method::POST, &path, Some(&SetPolicy { policy: &policy }), Retry::Unavailable).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_reads_as_the_emulator_answers_it() {
        let answer = r#"{"name": "projects/p/subscriptions/s", "topic": "projects/p/topics/t",
            "pushConfig": {"pushEndpoint": "https://x.run.app/tasks/pubsub/",
                "oidcToken": {"serviceAccountEmail": "a@p.iam.gserviceaccount.com", "audience": "https://x.run.app"}},
            "ackDeadlineSeconds": 30, "messageRetentionDuration": "604800s", "expirationPolicy": {},
            "deadLetterPolicy": {"deadLetterTopic": "projects/p/topics/d", "maxDeliveryAttempts": 5},
            "retryPolicy": {"minimumBackoff": "1.500s", "maximumBackoff": "20s"}}"#;
        let read: Subscription = serde_json::from_str(answer).unwrap();
        assert_eq!(read.expiration_policy, Some(ExpirationPolicy { ttl: None }));
        let retry = read.retry_policy.as_ref().unwrap();
        assert_eq!(retry.minimum_backoff, Seconds(std::time::Duration::from_millis(1500)));
        let pull: Subscription =
            serde_json::from_str(r#"{"topic": "projects/p/topics/t", "pushConfig": {}, "ackDeadlineSeconds": 10}"#)
                .unwrap();
        assert_eq!((pull.push_config, pull.expiration_policy), (PushConfig::default(), None));
        let written = serde_json::to_value(&read).unwrap();
        assert_eq!(written["expirationPolicy"], serde_json::json!({}), "never expires is sent as {{}}");
    }

    #[test]
    fn a_grant_keeps_everything_else_in_the_policy() {
        let mut policy: Policy = serde_json::from_str(
            r#"{"version": 3, "etag": "BwX1", "bindings": [
                {"role": "roles/pubsub.publisher", "members": ["user:a@x"], "condition": {"expression": "true"}},
                {"role": "roles/pubsub.viewer", "members": ["user:b@x"]}]}"#,
        )
        .unwrap();
        let agent = "serviceAccount:service-1@gcp-sa-pubsub.iam.gserviceaccount.com";
        assert!(!policy.grants("roles/pubsub.publisher", "user:a@x"), "a conditional binding does not count");
        policy.grant("roles/pubsub.publisher", agent);
        policy.grant("roles/pubsub.publisher", agent);
        assert!(policy.grants("roles/pubsub.publisher", agent));
        let written = serde_json::to_value(&policy).unwrap();
        assert_eq!(written["version"], 3);
        assert_eq!(written["etag"], "BwX1");
        assert_eq!(written["bindings"].as_array().unwrap().len(), 3);
        assert_eq!(written["bindings"][0]["condition"]["expression"], "true");
        assert_eq!(written["bindings"][2]["members"], serde_json::json!([agent]));
    }
}
