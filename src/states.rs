//! The words the database stores: the states a run, a job and an item can be in,
//! a pair's verdict, and a job's kind (its step in an instance's workflow). One enum
//! each, whose words are exactly the database's CHECK lists (a test in `store`
//! compares them with the schema the migrations build). A leaf: the store, the
//! workflow rules and the executor all speak these words.

use std::fmt;

/// Declares a state enum stored as a word: `as_str`, `ALL`, `Display`, `FromStr`.
macro_rules! stored_words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word stored in the database and printed in reports.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == s)
                    .ok_or_else(|| {
                        let words: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("unknown {} {s:?}: expected one of {}", stringify!($name), words.join(", "))
                    })
            }
        }
    };
}

stored_words! {
    /// Where a run is: planned -> running -> finished; stopped = ended early, resumable.
    RunState {
        Planned => "planned",
        Running => "running",
        Stopped => "stopped",
        Finished => "finished",
    }
}

stored_words! {
    /// Where a job is.
    JobState {
        /// Waits for `next_attempt_at` and for the jobs it depends on.
        Queued => "queued",
        /// An attempt is open.
        InFlight => "in_flight",
        Succeeded => "succeeded",
        Failed => "failed",
        /// Replaced by its children.
        Split => "split",
        /// Never sent: a job it depended on failed.
        Skipped => "skipped",
    }
}

impl JobState {
    /// True once the job will never be sent again.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::InFlight)
    }
}

stored_words! {
    /// The outcome of one input pair, as stored in `items.status`.
    ItemStatus {
        /// Valid, not yet done.
        Pending => "pending",
        /// A reply with a RequestId covered it.
        Succeeded => "succeeded",
        /// Its job failed for good.
        Failed => "failed",
        /// The row was wrong; never sent.
        Rejected => "rejected",
        /// The same (region, instance, key) appeared earlier; shares that item's outcome.
        Duplicate => "duplicate",
        /// Valid, never sent: a job it waited for failed (the reason says which).
        Skipped => "skipped",
    }
}

impl ItemStatus {
    /// Every status, in the order reports list them.
    pub const REPORT_ORDER: [ItemStatus; 6] = [
        ItemStatus::Succeeded,
        ItemStatus::Failed,
        ItemStatus::Skipped,
        ItemStatus::Rejected,
        ItemStatus::Duplicate,
        ItemStatus::Pending,
    ];

    /// Valid, distinct pairs: the ones the executor works on.
    pub fn is_valid_pair(self) -> bool {
        matches!(
            self,
            ItemStatus::Pending | ItemStatus::Succeeded | ItemStatus::Failed | ItemStatus::Skipped
        )
    }
}

stored_words! {
    /// What the cloud itself says of a pair (`keyfleet verify`), stored in `items.verified`.
    Verified {
        /// The key is no longer in the instance's `LoginSettings.KeyIds`.
        Gone => "gone",
        /// The key is still bound and no operation of ours is pending on it.
        StillBound => "still_bound",
        /// The instance's latest operation is still OPERATING after the wait.
        Operating => "operating",
        /// Our operation's `LatestOperationState` is FAILED and the key is still bound.
        OperationFailed => "operation_failed",
        /// DescribeInstances does not know the instance.
        InstanceMissing => "instance_missing",
        /// A bind item (rotation): the new key is in `LoginSettings.KeyIds` and no
        /// operation is running: confirmed.
        Bound => "bound",
        /// A bind item: the new key is not bound, and no operation of ours failed or runs.
        NotBound => "not_bound",
    }
}

stored_words! {
    /// A job's step in an instance's workflow (`jobs.kind`): what the job is for, and
    /// so which rules decide what follows its outcome (the `rules` module). Each kind
    /// sends one API action ([`JobKind::action`]).
    JobKind {
        /// Unbind pairs: `DisassociateInstancesKeyPairs`.
        Unbind => "unbind",
        /// A rotation's new keys: `AssociateInstancesKeyPairs`.
        Bind => "bind",
        /// Are an accepted Associate's new keys bound? (`DescribeInstances`)
        Confirm => "confirm",
        /// `--keep-one-key`: which keys the instances hold before anything is unbound.
        Look => "look",
        /// `keyfleet verify`: what became of the run's pairs.
        Verify => "verify",
        /// A live run (`--running stop-start|force-stop`): the instances' power state,
        /// zone and tags before anything is done (`DescribeInstances`).
        Survey => "survey",
        /// A live run: power instances off within the downtime budget (`StopInstances`).
        Stop => "stop",
        /// A live run: wait until instances reach a power state (STOPPED, no operation in
        /// progress, RUNNING again) (`DescribeInstances`).
        Settle => "settle",
        /// A live run: power instances the run stopped back on (`StartInstances`).
        Start => "start",
        /// A template change: re-read a launch template's versions before (and after)
        /// making one (`DescribeLaunchTemplateVersions`).
        TemplateLook => "template_look",
        /// A template change: a new version with the new key set, described with the
        /// change's marker (`CreateLaunchTemplateVersion`; not idempotent).
        Template => "template",
        /// A template change: the version made becomes the default
        /// (`ModifyLaunchTemplateDefaultVersion`).
        TemplateDefault => "template_default",
        /// A template change: re-read an Auto Scaling launch configuration
        /// (`DescribeLaunchConfigurations`).
        LaunchConfigLook => "launch_config_look",
        /// A template change: a launch configuration's `LoginSettings` rewritten
        /// (`ModifyLaunchConfigurationAttributes`).
        LaunchConfig => "launch_config",
    }
}

impl JobKind {
    /// The API action a job of this kind sends.
    pub fn action(self) -> crate::cvm::Action {
        use crate::cvm::Action;
        match self {
            JobKind::Unbind => Action::DisassociateInstancesKeyPairs,
            JobKind::Bind => Action::AssociateInstancesKeyPairs,
            JobKind::Confirm
            | JobKind::Look
            | JobKind::Verify
            | JobKind::Survey
            | JobKind::Settle => Action::DescribeInstances,
            JobKind::Stop => Action::StopInstances,
            JobKind::Start => Action::StartInstances,
            JobKind::TemplateLook => Action::DescribeLaunchTemplateVersions,
            JobKind::Template => Action::CreateLaunchTemplateVersion,
            JobKind::TemplateDefault => Action::ModifyLaunchTemplateDefaultVersion,
            JobKind::LaunchConfigLook => Action::DescribeLaunchConfigurations,
            JobKind::LaunchConfig => Action::ModifyLaunchConfigurationAttributes,
        }
    }

    /// True for the kinds that read the cloud's state and change nothing.
    pub fn is_read(self) -> bool {
        !self.action().is_write()
    }

    /// True for the kinds whose request, when its outcome is unknown (no reply, or an
    /// attempt a kill left open), is not sent again as is: a look replaces it and finds
    /// what it did first (`rules::template::in_doubt`); so is one that met a transient
    /// error (it may have been applied). CreateLaunchTemplateVersion
    /// makes a new version each time; a launch configuration is re-read so that a
    /// resumed change never writes over what it did not read.
    pub fn rereads_when_in_doubt(self) -> bool {
        matches!(self, JobKind::Template | JobKind::LaunchConfig)
    }

    /// True for the kinds of a template change (no instance, no pair).
    pub fn is_template(self) -> bool {
        matches!(
            self,
            JobKind::TemplateLook
                | JobKind::Template
                | JobKind::TemplateDefault
                | JobKind::LaunchConfigLook
                | JobKind::LaunchConfig
        )
    }
}

stored_words! {
    /// What hands a key to new instances (`template_changes.kind`).
    TemplateKind {
        /// A CVM launch template version.
        LaunchTemplate => "launch_template",
        /// An Auto Scaling launch configuration.
        LaunchConfiguration => "launch_configuration",
    }
}

stored_words! {
    /// Where a run's change of a template stands (`template_changes.state`).
    TemplateState {
        /// Its jobs are under way.
        Pending => "pending",
        /// It hands out the new key set (a new version, the default when the old one
        /// was; a launch configuration rewritten).
        Changed => "changed",
        /// Left as it was on purpose: its only key is the leaked one and no rotation
        /// target was given (the reason says so; `retire` names it).
        Kept => "kept",
        /// Nothing to do when it was read again: it no longer hands out the key.
        Unchanged => "unchanged",
        /// A step failed for good (the reason says which, with the code).
        Failed => "failed",
    }
}

stored_words! {
    /// Where an instance of a live run (`--running stop-start|force-stop`) is, as
    /// stored in `power.state`.
    PowerState {
        /// RUNNING when the run looked at it: waits for a slot of the downtime budget.
        Waiting => "waiting",
        /// Taken down: its stop (or ForceStop key request) is on its way. Down.
        Stopping => "stopping",
        /// STOPPED by the run; its key steps go on. Down.
        Stopped => "stopped",
        /// Its start is on its way. Down.
        Starting => "starting",
        /// RUNNING again, keeping its slot for `--warmup`. Down (for the budget).
        Warming => "warming",
        /// RUNNING again after its cycle: its slot is free.
        Up => "up",
        /// Not RUNNING when the run looked at it: never stopped nor started.
        Kept => "kept",
        /// RUNNING, never taken down (a stop that failed, Windows, the run halted).
        NotStopped => "not_stopped",
        /// Down and not coming back: its start failed for good. Down.
        LeftStopped => "left_stopped",
    }
}

impl PowerState {
    /// Counts against the downtime budget.
    pub fn is_down(self) -> bool {
        matches!(
            self,
            PowerState::Stopping
                | PowerState::Stopped
                | PowerState::Starting
                | PowerState::Warming
                | PowerState::LeftStopped
        )
    }

    /// Was RUNNING when the run looked at it (a budget's base).
    pub fn was_running(self) -> bool {
        !matches!(self, PowerState::Kept)
    }
}
