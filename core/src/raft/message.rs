//! What Raft nodes say to each other. Plain serde data: the real cluster
//! frames it with bincode, the tests hand it over directly.

use serde::{Deserialize, Serialize};

pub type NodeId = u64;
pub type Term = u64;
/// Position in the replicated log; the first entry has index 1.
pub type Index = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    /// Empty for the no-op a new leader appends to commit earlier terms.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "Would you vote for me in `term`?" — asked before disrupting anyone
    /// (Raft thesis §9.6): the sender's own term does not change.
    PreVote { term: Term, last_index: Index, last_term: Term },
    /// `term` is the term asked about; `current` the responder's own term,
    /// so a pre-candidate left behind learns the term it must reach.
    PreVoteResponse { term: Term, granted: bool, current: Term },
    RequestVote { term: Term, last_index: Index, last_term: Term },
    RequestVoteResponse { term: Term, granted: bool },
    /// Entries after (`prev_index`, `prev_term`); empty as a heartbeat.
    AppendEntries { term: Term, prev_index: Index, prev_term: Term, entries: Vec<Entry>, commit: Index },
    /// `success`: the log now matches up to `match_index`. Otherwise
    /// `match_index` is a hint: the follower's log does not extend past it.
    AppendEntriesResponse { term: Term, success: bool, match_index: Index },
    /// The leader's snapshot, whole, for a follower that needs entries the
    /// leader compacted away (Raft §7). Answered with an
    /// `AppendEntriesResponse` matching up to `last_index`.
    InstallSnapshot {
        term: Term,
        last_index: Index,
        last_term: Term,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

impl Message {
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::RequestVote { term, .. }
            | Message::RequestVoteResponse { term, .. }
            | Message::AppendEntries { term, .. }
            | Message::AppendEntriesResponse { term, .. }
            | Message::InstallSnapshot { term, .. } => *term,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}
