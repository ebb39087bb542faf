//! Who votes in the metadata group. Nodes that join become voters only
//! while that keeps the number of voters odd and at most five (three until
//! the cluster has five nodes); the others follow as learners, which get
//! every entry but do not count for a quorum. An even number of voters
//! tolerates no more failures than one fewer (four voters, like three,
//! survive one), and each extra voter slows every metadata commit.

/// How a replica enters the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// A voter (a learner already in the group is promoted).
    Voter(u64),
    /// A learner.
    Learner(u64),
}

/// Voters the metadata group aims for with `nodes` nodes in the cluster.
fn target_voters(nodes: usize) -> usize {
    if nodes >= 5 {
        5
    } else {
        3
    }
}

/// The first voters and learners of a metadata group bootstrapped on
/// `nodes`: the lowest ids as voters, as many as the target (an odd
/// number), the others as learners.
pub(super) fn initial(nodes: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let learners = sorted.split_off(target_voters(sorted.len()).min(sorted.len()));
    (sorted, learners)
}

/// The changes that admit `node` into a group of `voters` and `learners`:
/// as a voter if that (with learners that are up promoted alongside it)
/// makes an odd number of voters up to the target, else as a learner.
/// `only_learner` asks for a learner in any case. Empty when `node` is
/// already in as asked.
pub(super) fn admit(
    voters: &[u64],
    learners: &[u64],
    node: u64,
    only_learner: bool,
    up: impl Fn(u64) -> bool,
) -> Vec<Admission> {
    if voters.contains(&node) {
        return Vec::new();
    }
    let learner = || {
        if learners.contains(&node) {
            Vec::new()
        } else {
            vec![Admission::Learner(node)]
        }
    };
    let mut nodes: Vec<u64> = voters.iter().chain(learners).copied().collect();
    if !nodes.contains(&node) {
        nodes.push(node);
    }
    let target = target_voters(nodes.len());
    if only_learner || voters.len() >= target {
        return learner();
    }
    let mut promote = vec![node];
    let mut others = learners.iter().filter(|l| **l != node && up(**l));
    while voters.len() + promote.len() < target {
        match others.next() {
            Some(l) => promote.push(*l),
            None => break,
        }
    }
    if (voters.len() + promote.len()).is_multiple_of(2) {
        return learner();
    }
    promote.into_iter().map(Admission::Voter).collect()
}

#[cfg(test)]
mod tests {
    use super::Admission::{Learner, Voter};
    use super::*;

    #[test]
    fn a_bootstrapped_group_has_odd_voters() {
        assert_eq!(initial(&[2, 1]), (vec![1, 2], vec![]));
        assert_eq!(initial(&[3, 1, 2]), (vec![1, 2, 3], vec![]));
        assert_eq!(initial(&[4, 3, 2, 1]), (vec![1, 2, 3], vec![4]));
        assert_eq!(initial(&[1, 2, 3, 4, 5, 6]), (vec![1, 2, 3, 4, 5], vec![6]));
    }

    #[test]
    fn voters_stay_odd_and_at_most_five() {
        let all_up = |_| true;
        // The fourth node follows; the fifth is admitted with the fourth.
        assert_eq!(admit(&[1, 2, 3], &[], 4, false, all_up), vec![Learner(4)]);
        assert_eq!(
            admit(&[1, 2, 3], &[4], 5, false, all_up),
            vec![Voter(5), Voter(4)]
        );
        // ... unless the fourth is down: then the fifth waits as a learner.
        assert_eq!(
            admit(&[1, 2, 3], &[4], 5, false, |n| n != 4),
            vec![Learner(5)]
        );
        // Past five voters everyone follows.
        assert_eq!(
            admit(&[1, 2, 3, 4, 5], &[], 6, false, all_up),
            vec![Learner(6)]
        );
        // A small cluster fills up to three.
        assert_eq!(
            admit(&[1], &[2], 3, false, all_up),
            vec![Voter(3), Voter(2)]
        );
        assert_eq!(admit(&[1], &[], 2, false, all_up), vec![Learner(2)]);
        // Four voters (an older cluster) get odd again.
        assert_eq!(admit(&[1, 2, 3, 4], &[], 5, false, all_up), vec![Voter(5)]);
        // Asked for a learner; already in.
        assert_eq!(admit(&[1, 2], &[], 3, true, all_up), vec![Learner(3)]);
        assert!(admit(&[1, 2, 3], &[], 2, false, all_up).is_empty());
        assert!(admit(&[1, 2, 3], &[4], 4, true, all_up).is_empty());
        assert!(admit(&[1, 2, 3], &[4], 4, false, all_up).is_empty());
    }
}
