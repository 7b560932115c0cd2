//! One condition's verdict, and the `metav1.Condition` it becomes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Whether one condition holds, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    /// The condition holds.
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Verdict { ready: true, reason: reason.into(), message: message.into() }
    }

    /// The condition does not hold yet (or failed): `reason` says which.
    pub fn not(reason: &str, message: impl Into<String>) -> Self {
        Verdict { ready: false, reason: reason.into(), message: message.into() }
    }

    /// The condition of type `kind` for an object at `generation`, stamped `now`.
    pub fn condition(&self, kind: &str, generation: Option<i64>, now: &Time) -> Condition {
        Condition {
            type_: kind.into(),
            status: if self.ready { "True" } else { "False" }.into(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation: generation,
            last_transition_time: now.clone(),
        }
    }
}

/// The current time, as conditions stamp it.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Keeps a condition's transition time when its status did not change, as `meta.SetStatusCondition` does.
pub fn carry_transition_times(new: &mut [Condition], old: &[Condition]) {
    for c in new {
        if let Some(prev) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
}

/// `conditions` with `kind` set to True (added, or kept with its time), for a deletion in progress.
pub fn with_condition(
    mut conditions: Vec<Condition>,
    kind: &str,
    verdict: &Verdict,
    generation: Option<i64>,
) -> Vec<Condition> {
    let mut new = verdict.condition(kind, generation, &now());
    carry_transition_times(std::slice::from_mut(&mut new), &conditions);
    conditions.retain(|c| c.type_ != kind);
    conditions.push(new);
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_time_while_its_status_holds() {
        let then = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let old = vec![Verdict::not("A", "a").condition("X", Some(1), &then)];
        let mut new = vec![Verdict::not("B", "b").condition("X", Some(2), &now())];
        carry_transition_times(&mut new, &old);
        assert_eq!(new[0].last_transition_time, then);
        let mut flipped = vec![Verdict::ok("C", "c").condition("X", Some(2), &now())];
        carry_transition_times(&mut flipped, &old);
        assert_ne!(flipped[0].last_transition_time, then);
        let set = with_condition(old.clone(), "Deleting", &Verdict::ok("Deleting", "going"), Some(3));
        assert_eq!(set.len(), 2);
        assert_eq!(with_condition(set.clone(), "Deleting", &Verdict::ok("Deleting", "going"), Some(3)).len(), 2);
    }
}
