//! Staged firmware rollouts (a ferrohub addition), as pure rules: which
//! devices are in which wave, what each device's latest report means for
//! it, when the next wave starts, when the rollout halts itself, and whom
//! to hand the update next. The server feeds in observations of twins and
//! carries out the [`Step`] it gets back (tagging twins); nothing here does
//! IO or reads a clock.
//!
//! A member's life: `waiting` → (handed the update) `updating` → (reports
//! `current` at the target version) `soaking` → (still connected after the
//! soak time) `succeeded`. `error`/`rolledback` reported after the hand-off
//! send it to `retrying` while retries remain (the update is withdrawn and
//! offered again), else to `failed`; so do going offline while soaking and
//! exceeding the device timeout while updating.

use serde::{Deserialize, Serialize};

use crate::error::{HubError, HubResult};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RolloutState {
    /// Waves advance and devices are handed the update.
    Running,
    /// Held by an operator: nobody new is handed the update.
    Paused,
    /// The failure threshold was reached: nobody new is handed the update.
    Halted,
    /// Every wave reached the success threshold.
    Succeeded,
    /// Stopped by an operator.
    Cancelled,
    /// Stopped by an operator, and every device handed the update was
    /// offered the version it reported when it joined.
    RolledBack,
}

impl RolloutState {
    /// Nothing changes any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Cancelled | Self::RolledBack)
    }

    /// Members are still observed (devices already handed the update keep
    /// updating while a rollout is paused or halted).
    pub fn observes(self) -> bool {
        !self.is_final()
    }
}

/// One device's place in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Not handed the update yet.
    Waiting,
    /// Handed the update; no result yet.
    Updating,
    /// Failed an attempt with retries left: the update is withdrawn, to be
    /// offered again once the withdrawal reached the twin.
    Retrying,
    /// Reported `current` at the target version; must stay connected for
    /// the soak time.
    Soaking,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
}

/// A device in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The device.
    pub device_id: String,
    /// Its wave (1-based).
    pub wave: usize,
    /// The `currentFwVersion` it reported when it joined (rollback target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Where it stands.
    pub phase: Phase,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// When it was last handed the update (ms since the epoch).
    #[serde(default)]
    pub handed_at: u64,
    /// Its reported `$version` when handed the update: only later reports
    /// count as this attempt's result.
    #[serde(default)]
    pub handed_reported_version: i64,
    /// When it reported `current` at the target version (ms).
    #[serde(default)]
    pub soak_since: u64,
    /// Why it failed (or its last failed attempt).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Member {
    /// A member not handed the update yet.
    fn waiting(device_id: String, wave: usize, from_version: Option<String>) -> Self {
        Self {
            device_id,
            wave,
            from_version,
            phase: Phase::Waiting,
            attempts: 0,
            handed_at: 0,
            handed_reported_version: 0,
            soak_since: 0,
            reason: String::new(),
        }
    }
}

/// What the hub currently knows of a member's twin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Whether the device has a live connection.
    pub connected: bool,
    /// Its reported properties' `$version`.
    pub reported_version: i64,
    /// `properties.reported.firmware.fwUpdateStatus`.
    pub status: Option<String>,
    /// `properties.reported.firmware.fwUpdateSubstatus`.
    pub substatus: Option<String>,
    /// `properties.reported.firmware.currentFwVersion`.
    pub current_version: Option<String>,
    /// Whether the rollout's configuration is applied to the twin (a
    /// withdrawal has reached it when this is false).
    pub applied: bool,
}

/// The tunables of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Cumulative shares of the devices, in percent, ascending, the last 100.
    pub waves: Vec<u32>,
    /// Percent of a wave's (cumulative) devices that must succeed before the
    /// next wave starts.
    pub success_threshold: u32,
    /// Percent of the devices handed the update whose failure halts it.
    pub failure_threshold: u32,
    /// Most devices handed the update per minute (0: no limit).
    #[serde(default)]
    pub max_per_minute: u32,
    /// Seconds a device may take from hand-off to a result.
    pub device_timeout_seconds: u64,
    /// Attempts after the first one.
    #[serde(default)]
    pub retries: u32,
    /// Seconds a device must stay connected at `current`.
    #[serde(default)]
    pub soak_seconds: u64,
}

impl Policy {
    /// Checks the tunables.
    pub fn validate(&self) -> HubResult<()> {
        let w = &self.waves;
        if w.is_empty() || !w.windows(2).all(|p| p[0] < p[1]) || w[0] == 0 || w.last() != Some(&100) {
            return Err(HubError::invalid(
                "Waves are ascending cumulative percentages from 1 to 100, the last one 100",
            ));
        }
        if !(1..=100).contains(&self.success_threshold) || !(1..=100).contains(&self.failure_threshold) {
            return Err(HubError::invalid("Thresholds are percentages from 1 to 100"));
        }
        if self.device_timeout_seconds == 0 {
            return Err(HubError::invalid("The device timeout must be at least one second"));
        }
        if self.retries > 100 {
            return Err(HubError::invalid("At most 100 retries"));
        }
        Ok(())
    }
}

/// Counts of members by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// Members.
    pub devices: u64,
    /// Not handed the update yet.
    pub waiting: u64,
    /// Handed the update, no result yet (includes retrying).
    pub updating: u64,
    /// At `current`, soaking.
    pub soaking: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed for good.
    pub failed: u64,
}

impl Tally {
    fn add(&mut self, phase: Phase) {
        self.devices += 1;
        match phase {
            Phase::Waiting => self.waiting += 1,
            Phase::Updating | Phase::Retrying => self.updating += 1,
            Phase::Soaking => self.soaking += 1,
            Phase::Succeeded => self.succeeded += 1,
            Phase::Failed => self.failed += 1,
        }
    }

    /// Members handed the update at least once.
    pub fn handed(&self) -> u64 {
        self.devices - self.waiting
    }
}

/// What the server must do after a step: set the wave tag on these twins
/// (hand the update), clear it on those (withdraw it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// `(device, wave)` to tag.
    pub hand: Vec<(String, usize)>,
    /// Devices to untag.
    pub withdraw: Vec<String>,
    /// Whether anything in the rollout changed (it must be saved first).
    pub changed: bool,
}

/// The rollout's progress and members, ordered: the devices matching at
/// creation sorted by id, then late joiners in the order they joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The last wave started (1-based).
    pub current_wave: usize,
    /// Where it stands.
    pub state: RolloutState,
    /// Why it halted or ended, when it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The members.
    pub members: Vec<Member>,
}

/// `pct` percent of `of`, rounded up.
pub fn share(pct: u32, of: u64) -> u64 {
    (of * u64::from(pct)).div_ceil(100)
}

/// Cumulative member counts per wave for `n` devices, each wave at least
/// one device more than the last while devices remain.
pub fn wave_ends(waves: &[u32], n: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(waves.len());
    let mut last = 0;
    for pct in waves {
        let mut end = (n * *pct as usize).div_ceil(100).min(n);
        if end <= last && last < n {
            end = last + 1;
        }
        ends.push(end);
        last = end;
    }
    ends
}

/// Hands out a per-minute allowance (a token bucket holding at most one
/// second's worth, at least one device).
#[derive(Debug, Clone)]
pub struct Pacer {
    per_minute: u32,
    tokens: f64,
    last_ms: Option<u64>,
}

impl Pacer {
    /// A pacer for `per_minute` devices (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, tokens: 0.0, last_ms: None }
    }

    /// How many devices may be handed the update at `now_ms`.
    pub fn available(&mut self, now_ms: u64) -> usize {
        if self.per_minute == 0 {
            return usize::MAX;
        }
        let rate = f64::from(self.per_minute) / 60_000.0;
        let cap = (rate * 1000.0).max(1.0);
        let elapsed = self.last_ms.map_or(1000, |last| now_ms.saturating_sub(last));
        self.last_ms = Some(now_ms);
        #[allow(clippy::cast_precision_loss)]
        let refill = elapsed as f64 * rate;
        self.tokens = (self.tokens + refill).min(cap);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = self.tokens.floor() as usize;
        whole
    }

    /// Records that `n` devices were handed the update.
    pub fn spend(&mut self, n: usize) {
        if self.per_minute != 0 {
            #[allow(clippy::cast_precision_loss)]
            let n = n as f64;
            self.tokens = (self.tokens - n).max(0.0);
        }
    }
}

impl Progress {
    /// A new rollout over `devices` (`(id, currentFwVersion)`, any order).
    pub fn new(policy: &Policy, mut devices: Vec<(String, Option<String>)>) -> Self {
        devices.sort();
        let ends = wave_ends(&policy.waves, devices.len());
        let members = devices
            .into_iter()
            .enumerate()
            .map(|(i, (device_id, from_version))| {
                let wave = ends.iter().position(|end| i < *end).map_or(ends.len(), |p| p + 1);
                Member::waiting(device_id, wave, from_version)
            })
            .collect();
        Self { current_wave: 1, state: RolloutState::Running, reason: String::new(), members }
    }

    /// A device that started matching joins the current wave.
    pub fn join(&mut self, device_id: String, from_version: Option<String>) {
        self.members.push(Member::waiting(device_id, self.current_wave, from_version));
    }

    /// Counts per wave (index 0 = wave 1) and in total.
    pub fn tally(&self, waves: usize) -> (Vec<Tally>, Tally) {
        let mut per_wave = vec![Tally::default(); waves];
        let mut total = Tally::default();
        for m in &self.members {
            if let Some(t) = m.wave.checked_sub(1).and_then(|w| per_wave.get_mut(w)) {
                t.add(m.phase);
            }
            total.add(m.phase);
        }
        (per_wave, total)
    }

    /// Applies what is known of one member's twin (`None`: the device is
    /// gone). Returns whether the member changed and whether its update must
    /// be withdrawn for a retry.
    pub fn observe(
        &mut self,
        index: usize,
        seen: Option<&Observation>,
        version: &str,
        policy: &Policy,
        now_ms: u64,
    ) -> (bool, bool) {
        let Some(m) = self.members.get_mut(index) else { return (false, false) };
        let before = m.clone();
        let mut withdraw = false;
        match (m.phase, seen) {
            (Phase::Waiting | Phase::Succeeded | Phase::Failed, _) => {}
            (_, None) => fail(m, "the device was deleted"),
            (Phase::Retrying, Some(_)) => {}
            (Phase::Updating, Some(o)) => {
                let at_target =
                    o.status.as_deref() == Some("current") && o.current_version.as_deref() == Some(version);
                let fresh = o.reported_version > m.handed_reported_version;
                if at_target {
                    m.soak_since = now_ms;
                    m.phase = if policy.soak_seconds == 0 { Phase::Succeeded } else { Phase::Soaking };
                } else if fresh && matches!(o.status.as_deref(), Some("error" | "rolledback")) {
                    m.attempts += 1;
                    let why = format!(
                        "{}: {}",
                        o.status.as_deref().unwrap_or_default(),
                        o.substatus.as_deref().unwrap_or("no reason given")
                    );
                    if m.attempts <= policy.retries {
                        m.phase = Phase::Retrying;
                        m.reason = format!("attempt {} failed ({why})", m.attempts);
                        withdraw = true;
                    } else {
                        fail(m, &why);
                    }
                } else if now_ms.saturating_sub(m.handed_at) >= policy.device_timeout_seconds * 1000 {
                    fail(m, &format!("no result within {} s", policy.device_timeout_seconds));
                }
            }
            (Phase::Soaking, Some(o)) => {
                let at_target =
                    o.status.as_deref() == Some("current") && o.current_version.as_deref() == Some(version);
                if !o.connected {
                    fail(m, "went offline while soaking");
                } else if !at_target {
                    let status = o.status.as_deref().unwrap_or("nothing");
                    fail(m, &format!("reported {status} while soaking"));
                } else if now_ms.saturating_sub(m.soak_since) >= policy.soak_seconds * 1000 {
                    m.phase = Phase::Succeeded;
                }
            }
        }
        (*m != before, withdraw)
    }

    /// Decides the rollout's next move after the observations: halt, start
    /// the next wave or finish, and hand the update to whom the pace allows.
    /// `seen` answers for members about to be handed the update.
    pub fn decide(
        &mut self,
        policy: &Policy,
        pacer: &mut Pacer,
        now_ms: u64,
        seen: &dyn Fn(&str) -> Option<Observation>,
    ) -> Step {
        let mut step = Step::default();
        if self.state != RolloutState::Running {
            return step;
        }
        let (_, total) = self.tally(policy.waves.len());
        let handed = total.handed();
        if total.failed > 0 && total.failed >= share(policy.failure_threshold, handed) {
            self.state = RolloutState::Halted;
            self.reason = format!(
                "{} of {handed} devices handed the update failed (threshold {}%)",
                total.failed, policy.failure_threshold
            );
            step.changed = true;
            return step;
        }
        let in_waves = self.members.iter().filter(|m| m.wave <= self.current_wave).count() as u64;
        let succeeded = self
            .members
            .iter()
            .filter(|m| m.wave <= self.current_wave && m.phase == Phase::Succeeded)
            .count() as u64;
        if succeeded >= share(policy.success_threshold, in_waves) {
            if self.current_wave >= policy.waves.len() {
                self.state = RolloutState::Succeeded;
                self.reason = format!("{succeeded} of {in_waves} devices succeeded");
                step.changed = true;
                return step;
            }
            self.current_wave += 1;
            step.changed = true;
        }
        let mut allowance = pacer.available(now_ms);
        let mut handed_now = 0;
        for m in self.members.iter_mut().filter(|m| m.wave <= self.current_wave) {
            if allowance == 0 {
                break;
            }
            let ready = match m.phase {
                Phase::Waiting => true,
                // Re-offer only once the withdrawal reached the twin, so the
                // device sees the update go and come back.
                Phase::Retrying => seen(&m.device_id).is_some_and(|o| !o.applied),
                _ => false,
            };
            if !ready {
                continue;
            }
            let o = seen(&m.device_id).unwrap_or_default();
            m.phase = Phase::Updating;
            m.handed_at = now_ms;
            m.handed_reported_version = o.reported_version;
            step.hand.push((m.device_id.clone(), m.wave));
            allowance -= 1;
            handed_now += 1;
        }
        pacer.spend(handed_now);
        step.changed |= handed_now > 0;
        step
    }
}

fn fail(m: &mut Member, why: &str) {
    m.phase = Phase::Failed;
    m.reason = why.to_owned();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy() -> Policy {
        Policy {
            waves: vec![20, 50, 100],
            success_threshold: 100,
            failure_threshold: 50,
            max_per_minute: 0,
            device_timeout_seconds: 60,
            retries: 0,
            soak_seconds: 10,
        }
    }

    fn fleet(n: usize) -> Vec<(String, Option<String>)> {
        (0..n).map(|i| (format!("d{i:02}"), Some("1.0".into()))).collect()
    }

    fn report(status: &str, version: &str, reported_version: i64) -> Observation {
        Observation {
            connected: true,
            reported_version,
            status: Some(status.into()),
            substatus: Some("why".into()),
            current_version: Some(version.into()),
            applied: true,
        }
    }

    fn step(p: &mut Progress, policy: &Policy, now: u64) -> Step {
        p.decide(policy, &mut Pacer::new(policy.max_per_minute), now, &|_| Some(Observation::default()))
    }

    #[test]
    fn waves_are_cumulative_and_never_empty() {
        assert_eq!(wave_ends(&[20, 50, 100], 10), vec![2, 5, 10]);
        assert_eq!(wave_ends(&[1, 10, 50, 100], 3), vec![1, 2, 3, 3]);
        assert_eq!(wave_ends(&[1, 10, 50, 100], 100), vec![1, 10, 50, 100]);
        let p = Progress::new(&policy(), fleet(10));
        let waves: Vec<usize> = p.members.iter().map(|m| m.wave).collect();
        assert_eq!(waves, vec![1, 1, 2, 2, 2, 3, 3, 3, 3, 3]);
        assert_eq!(share(90, 10), 9);
        assert_eq!(share(10, 3), 1);
    }

    #[test]
    fn policies_are_checked() {
        assert!(policy().validate().is_ok());
        for waves in [&[][..], &[50, 10, 100], &[10, 50], &[0, 100], &[10, 10, 100]] {
            let p = Policy { waves: waves.to_vec(), ..policy() };
            assert!(p.validate().is_err(), "{waves:?}");
        }
        assert!(Policy { success_threshold: 0, ..policy() }.validate().is_err());
        assert!(Policy { failure_threshold: 101, ..policy() }.validate().is_err());
        assert!(Policy { device_timeout_seconds: 0, ..policy() }.validate().is_err());
    }

    #[test]
    fn a_wave_starts_only_when_the_last_one_succeeded_after_its_soak() {
        let policy = policy();
        let mut p = Progress::new(&policy, fleet(10));
        let s = step(&mut p, &policy, 0);
        assert_eq!(s.hand, vec![("d00".into(), 1), ("d01".into(), 1)]);
        // Reporting current starts the soak; the wave waits for it.
        for i in 0..2 {
            p.observe(i, Some(&report("current", "2.0", 5)), "2.0", &policy, 1_000);
        }
        assert_eq!(p.members[0].phase, Phase::Soaking);
        assert!(step(&mut p, &policy, 1_000).hand.is_empty());
        for i in 0..2 {
            p.observe(i, Some(&report("current", "2.0", 5)), "2.0", &policy, 11_000);
        }
        assert_eq!(p.members[1].phase, Phase::Succeeded);
        let s = step(&mut p, &policy, 11_000);
        assert_eq!(p.current_wave, 2);
        assert_eq!(s.hand.len(), 3);
    }

    #[test]
    fn going_offline_while_soaking_fails_and_failures_halt() {
        let policy = policy();
        let mut p = Progress::new(&policy, fleet(10));
        step(&mut p, &policy, 0);
        p.observe(0, Some(&report("current", "2.0", 5)), "2.0", &policy, 1_000);
        let offline = Observation { connected: false, ..report("current", "2.0", 5) };
        let (changed, _) = p.observe(0, Some(&offline), "2.0", &policy, 2_000);
        assert!(changed);
        assert_eq!(p.members[0].phase, Phase::Failed);
        assert!(p.members[0].reason.contains("offline"));
        // 1 of 2 handed failed: 50% reaches the threshold.
        let s = step(&mut p, &policy, 2_000);
        assert!(s.changed && s.hand.is_empty());
        assert_eq!(p.state, RolloutState::Halted);
    }

    #[test]
    fn stale_failures_are_ignored_and_retries_withdraw_then_reoffer() {
        let policy = Policy { retries: 1, ..policy() };
        let mut p = Progress::new(&policy, fleet(10));
        let seen =
            |_: &str| Some(Observation { reported_version: 7, applied: true, ..Observation::default() });
        p.decide(&policy, &mut Pacer::new(0), 0, &seen);
        assert_eq!(p.members[0].handed_reported_version, 7);
        // A `rolledback` from before the hand-off does not count.
        assert_eq!(p.observe(0, Some(&report("rolledback", "1.0", 7)), "2.0", &policy, 1), (false, false));
        // A fresh one is a failed attempt with a retry left.
        assert_eq!(p.observe(0, Some(&report("rolledback", "1.0", 9)), "2.0", &policy, 2), (true, true));
        assert_eq!(p.members[0].phase, Phase::Retrying);
        // Re-offered only once the withdrawal reached the twin.
        let still =
            |_: &str| Some(Observation { reported_version: 9, applied: true, ..Observation::default() });
        assert!(p.decide(&policy, &mut Pacer::new(0), 3, &still).hand.is_empty());
        let gone =
            |_: &str| Some(Observation { reported_version: 9, applied: false, ..Observation::default() });
        let s = p.decide(&policy, &mut Pacer::new(0), 4, &gone);
        assert_eq!(s.hand, vec![("d00".into(), 1)]);
        // The second failure is final.
        p.observe(0, Some(&report("error", "1.0", 11)), "2.0", &policy, 5);
        assert_eq!(p.members[0].phase, Phase::Failed);
        assert_eq!(p.members[0].attempts, 2);
    }

    #[test]
    fn a_silent_device_times_out() {
        let policy = policy();
        let mut p = Progress::new(&policy, fleet(10));
        step(&mut p, &policy, 0);
        let quiet = report("downloading", "1.0", 3);
        p.observe(0, Some(&quiet), "2.0", &policy, 59_999);
        assert_eq!(p.members[0].phase, Phase::Updating);
        p.observe(0, Some(&quiet), "2.0", &policy, 60_000);
        assert_eq!(p.members[0].phase, Phase::Failed);
        assert!(p.members[0].reason.contains("60 s"));
    }

    #[test]
    fn pacing_limits_hand_offs_per_minute() {
        let policy = Policy { waves: vec![100], max_per_minute: 120, ..policy() };
        let mut p = Progress::new(&policy, fleet(10));
        let mut pacer = Pacer::new(120);
        let none = |_: &str| None;
        // Two per second.
        assert_eq!(p.decide(&policy, &mut pacer, 1_000, &none).hand.len(), 2);
        assert_eq!(p.decide(&policy, &mut pacer, 1_500, &none).hand.len(), 1);
        assert_eq!(p.decide(&policy, &mut pacer, 1_500, &none).hand.len(), 0);
        // A long pause does not bank more than a second's worth.
        assert_eq!(p.decide(&policy, &mut pacer, 60_000, &none).hand.len(), 2);
    }

    #[test]
    fn late_joiners_join_the_current_wave_and_success_ends_it() {
        let policy = Policy { soak_seconds: 0, ..policy() };
        let mut p = Progress::new(&policy, fleet(2));
        assert_eq!(wave_ends(&policy.waves, 2), vec![1, 2, 2]);
        step(&mut p, &policy, 0);
        p.join("late".into(), None);
        assert_eq!(p.members[2].wave, 1);
        let s = step(&mut p, &policy, 1);
        assert_eq!(s.hand, vec![("late".into(), 1)]);
        for i in [0, 2] {
            p.observe(i, Some(&report("current", "2.0", 5)), "2.0", &policy, 2);
            assert_eq!(p.members[i].phase, Phase::Succeeded);
        }
        step(&mut p, &policy, 3);
        assert_eq!(p.current_wave, 2);
        p.observe(1, Some(&report("current", "2.0", 5)), "2.0", &policy, 4);
        step(&mut p, &policy, 5); // wave 3 holds no new devices
        step(&mut p, &policy, 6);
        assert_eq!(p.state, RolloutState::Succeeded);
        let (per_wave, total) = p.tally(3);
        assert_eq!(total.succeeded, 3);
        assert_eq!(per_wave[0].devices, 2);
    }
}
