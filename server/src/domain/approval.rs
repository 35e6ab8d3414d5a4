//! Who may decide a run's suspend step. The values a step accepts are the catalog's
//! ([`crate::domain::catalog::Catalog::check_supplied`]); how a decision moves the run is the
//! state machine's ([`crate::domain::machine::on_decision`]).

use crate::domain::run::Run;

/// A command's approval rules.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// Role ids that may approve; empty: whoever may run the command.
    pub approvers: &'a [String],
    /// The member who started a run may not decide it.
    pub require_second_person: bool,
}

/// Whether the member `user_id` with `role_ids` may decide `run`'s waiting step under `rules`;
/// a refusal is the sentence the member reads. With no approvers listed, the caller checks
/// that the member may run the command (the role policy decides that, not this).
pub fn may_decide(
    rules: Rules<'_>,
    run: &Run,
    user_id: &str,
    role_ids: &[String],
) -> Result<(), String> {
    if rules.require_second_person && user_id == run.requester.user_id {
        return Err(format!(
            "`/{}` needs a second person: the member who started a run may not approve it",
            run.command
        ));
    }
    if !rules.approvers.is_empty() && !role_ids.iter().any(|r| rules.approvers.contains(r)) {
        return Err(format!(
            "approving `/{}` needs one of the roles {}",
            run.command,
            rules
                .approvers
                .iter()
                .map(|r| format!("<@&{r}>"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::run::RunStatus;

    #[test]
    fn approvers_and_the_second_person() {
        let mut run = Run::example(RunStatus::Running);
        run.command = "deploy".into();
        run.requester.user_id = "300000000000000001".into();
        let approvers = ["200000000000000009".to_string()];
        let member = |roles: &[&str]| roles.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        let open = Rules {
            approvers: &[],
            require_second_person: false,
        };
        // No rules: anyone (the role policy decides who may run the command).
        assert_eq!(may_decide(open, &run, "300000000000000001", &[]), Ok(()));
        let second = Rules {
            require_second_person: true,
            ..open
        };
        let e = may_decide(second, &run, "300000000000000001", &[]).expect_err("own run");
        assert!(e.contains("needs a second person"), "{e}");
        assert_eq!(may_decide(second, &run, "300000000000000002", &[]), Ok(()));
        let listed = Rules {
            approvers: &approvers,
            require_second_person: false,
        };
        let e = may_decide(listed, &run, "300000000000000002", &member(&["1"]))
            .expect_err("not an approver");
        assert!(e.contains("<@&200000000000000009>"), "{e}");
        assert_eq!(
            may_decide(
                listed,
                &run,
                "300000000000000002",
                &member(&["1", "200000000000000009"])
            ),
            Ok(())
        );
    }
}
