//! ListGroups, DescribeGroups and DeleteGroups.

use super::state::GroupState;
use super::store::StoredKey;
use super::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, DescribedGroup, DescribedMember,
    GroupCoordinator, GroupEffect, GroupResponse, ListGroupsRequest, ListGroupsResponse, ListedGroup, PendingWrite, reply,
};
use crate::ErrorCode;
use crate::broker::RequestId;

impl GroupCoordinator {
    pub(super) fn list(&self, r: ListGroupsRequest) -> ListGroupsResponse {
        let wanted = |filter: &[String], value: &str| filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value));
        let groups = self
            .groups
            .values()
            .filter(|g| wanted(&r.states_filter, g.state.name()))
            .filter(|_| wanted(&r.types_filter, "classic"))
            .map(|g| ListedGroup { group_id: g.id.clone(), protocol_type: g.protocol_type.clone(), state: g.state.name().to_string() })
            .collect();
        ListGroupsResponse { error: ErrorCode::None, groups }
    }

    pub(super) fn describe(&self, r: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let groups = r
            .groups
            .into_iter()
            .map(|id| match self.groups.get(&id) {
                // Kafka describes an unknown group as "Dead", without error.
                None => DescribedGroup {
                    error: if id.is_empty() { ErrorCode::InvalidGroupId } else { ErrorCode::None },
                    group_id: id,
                    state: "Dead".into(),
                    protocol_type: String::new(),
                    protocol: String::new(),
                    members: Vec::new(),
                },
                Some(g) => {
                    let protocol = g.protocol.clone().unwrap_or_default();
                    DescribedGroup {
                        error: ErrorCode::None,
                        group_id: id,
                        state: g.state.name().into(),
                        protocol_type: g.protocol_type.clone(),
                        // Kafka reports the protocol only once a generation is formed.
                        protocol: if g.state == GroupState::Stable || g.state == GroupState::CompletingRebalance {
                            protocol.clone()
                        } else {
                            String::new()
                        },
                        members: g
                            .members
                            .values()
                            .map(|m| DescribedMember {
                                member_id: m.id.clone(),
                                group_instance_id: m.instance_id.clone(),
                                client_id: m.client_id.clone(),
                                client_host: m.client_host.clone(),
                                metadata: m.metadata(&protocol),
                                assignment: m.assignment.clone(),
                            })
                            .collect(),
                    }
                }
            })
            .collect();
        DescribeGroupsResponse { groups }
    }

    /// Deletes empty groups with their committed offsets; answers once the
    /// tombstones are durable.
    pub(super) fn delete(&mut self, id: RequestId, r: DeleteGroupsRequest, out: &mut Vec<GroupEffect>) {
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut deleted = Vec::new();
        for group_id in r.groups {
            let error = match self.groups.get(&group_id) {
                _ if group_id.is_empty() => ErrorCode::InvalidGroupId,
                None => ErrorCode::GroupIdNotFound,
                Some(g) if g.state != GroupState::Empty => ErrorCode::NonEmptyGroup,
                Some(g) if g.commits_in_flight > 0 => ErrorCode::NonEmptyGroup,
                Some(g) => {
                    for (topic, partition) in g.offsets.keys() {
                        let key = StoredKey::Offset { group: group_id.clone(), topic: topic.clone(), partition: *partition };
                        records.push((key.encode(), None));
                    }
                    records.push((StoredKey::Group { group: group_id.clone() }.encode(), None));
                    deleted.extend(self.groups.remove(&group_id));
                    ErrorCode::None
                }
            };
            results.push((group_id, error));
        }
        let response = DeleteGroupsResponse { results };
        if records.is_empty() {
            reply(out, id, GroupResponse::DeleteGroups(response));
        } else {
            self.append(records, PendingWrite::Delete { id, response, deleted }, out);
        }
    }
}
